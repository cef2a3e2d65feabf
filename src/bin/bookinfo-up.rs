//! `bookinfo-up PLAN`: bring the plan's playground to its converged state.

fn main() {
    std::process::exit(bookinfo_up::cli::up_main());
}
