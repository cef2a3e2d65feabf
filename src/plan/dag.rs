//! Step ordering: waves of steps whose needs all lie in earlier waves, and cycle detection
//! that reports the whole cycle.

/// Groups step indices into waves (declaration order within a wave), or returns a cycle as
/// the list of indices along it, starting from its earliest-declared step.
pub fn waves(needs: &[Vec<usize>]) -> Result<Vec<Vec<usize>>, Vec<usize>> {
    let n = needs.len();
    let mut level: Vec<Option<usize>> = vec![None; n];
    let mut remaining: Vec<usize> = (0..n).collect();
    let mut waves = Vec::new();
    while !remaining.is_empty() {
        let wave: Vec<usize> = remaining
            .iter()
            .copied()
            .filter(|&i| needs[i].iter().all(|&d| level[d].is_some()))
            .collect();
        if wave.is_empty() {
            return Err(find_cycle(needs, &remaining));
        }
        for &i in &wave {
            level[i] = Some(waves.len());
        }
        remaining.retain(|i| !wave.contains(i));
        waves.push(wave);
    }
    Ok(waves)
}

/// A cycle among `candidates` (steps that could not be ordered), following `needs` edges.
fn find_cycle(needs: &[Vec<usize>], candidates: &[usize]) -> Vec<usize> {
    // Every unordered step needs at least one other unordered step, so walking such edges
    // from any of them must come back to a step already on the path.
    let stuck = |i: usize| candidates.contains(&i);
    let mut path = vec![candidates[0]];
    loop {
        let current = *path.last().expect("path is never empty");
        let next = needs[current]
            .iter()
            .copied()
            .find(|&d| stuck(d))
            .expect("an unordered step needs another unordered step");
        if let Some(pos) = path.iter().position(|&p| p == next) {
            let mut cycle = path.split_off(pos);
            let start = cycle
                .iter()
                .enumerate()
                .min_by_key(|(_, v)| **v)
                .map(|(i, _)| i)
                .unwrap_or(0);
            cycle.rotate_left(start);
            return cycle;
        }
        path.push(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn independent_steps_share_a_wave() {
        let needs = vec![vec![], vec![], vec![0, 1], vec![0], vec![2, 3]];
        assert_eq!(
            waves(&needs).unwrap(),
            vec![vec![0, 1], vec![2, 3], vec![4]]
        );
    }

    #[test]
    fn a_chain_is_one_step_per_wave() {
        let needs = vec![vec![], vec![0], vec![1]];
        assert_eq!(waves(&needs).unwrap(), vec![vec![0], vec![1], vec![2]]);
    }

    #[test]
    fn cycles_are_reported_whole() {
        // 0 is fine; 1 -> 2 -> 3 -> 1 is a cycle; 4 needs the cycle.
        let needs = vec![vec![], vec![0, 3], vec![1], vec![2], vec![1]];
        assert_eq!(waves(&needs).unwrap_err(), vec![1, 3, 2]);
    }

    #[test]
    fn two_step_cycle() {
        let needs = vec![vec![1], vec![0]];
        assert_eq!(waves(&needs).unwrap_err(), vec![0, 1]);
    }

    #[test]
    fn empty_plan_has_no_waves() {
        assert!(waves(&[]).unwrap().is_empty());
    }
}
