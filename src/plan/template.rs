//! The one template engine, for plan strings and for manifests, local or fetched: `render`
//! replaces `${name}`, `${env.NAME}` and `${env.NAME:-default}`; `$${` is a literal `${`.
//! Callers say what a reference is worth (`Ref`) and how to report what is not.

use std::ops::Range;

/// A reference found in a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ref<'a> {
    /// `${name}`: a plan variable.
    Var(&'a str),
    /// `${env.NAME}` or `${env.NAME:-default}`: an environment variable.
    Env {
        name: &'a str,
        default: Option<&'a str>,
    },
}

/// What went wrong in a template, with byte ranges into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error<E> {
    /// A `${` without its `}`: the rest of the text cannot be read.
    Unclosed { at: Range<usize> },
    /// `${...}` holding neither a variable name nor `env.NAME`.
    NotAReference { expr: String, at: Range<usize> },
    /// The caller could not give the reference a value.
    Lookup(E),
}

/// Renders `text`, asking `lookup` for the value of every reference (with its byte range).
/// Every error is reported, in order; an unclosed `${` ends the reading.
pub fn render<E>(
    text: &str,
    mut lookup: impl FnMut(&Ref<'_>, Range<usize>) -> Result<String, E>,
) -> Result<String, Vec<Error<E>>> {
    let mut out = String::with_capacity(text.len());
    let mut errors = Vec::new();
    let mut rest = text;
    let mut pos = 0;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let at = pos + i;
        let after = &rest[i..];
        if let Some(escaped) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = escaped;
            pos = at + 3;
            continue;
        }
        if !after.starts_with("${") {
            out.push('$');
            rest = &after[1..];
            pos = at + 1;
            continue;
        }
        let Some(end) = after.find('}') else {
            errors.push(Error::Unclosed { at: at..at + 2 });
            return Err(errors);
        };
        let expr = &after[2..end];
        let span = at..at + end + 1;
        let reference = match expr.strip_prefix("env.") {
            Some(env) => Some(match env.split_once(":-") {
                Some((name, default)) => Ref::Env {
                    name,
                    default: Some(default),
                },
                None => Ref::Env {
                    name: env,
                    default: None,
                },
            }),
            None => valid_var_name(expr).then_some(Ref::Var(expr)),
        };
        match reference {
            Some(r) => match lookup(&r, span) {
                Ok(v) => out.push_str(&v),
                Err(e) => errors.push(Error::Lookup(e)),
            },
            None => errors.push(Error::NotAReference {
                expr: expr.to_string(),
                at: span,
            }),
        }
        rest = &after[end + 1..];
        pos = at + end + 1;
    }
    out.push_str(rest);
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// The value of `${env.NAME:-default}`: the variable when set, else the default.
pub fn env_value(
    name: &str,
    default: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<String> {
    env(name).or_else(|| default.map(str::to_string))
}

/// A plan variable's name: letters, digits and `_`, not starting with a digit.
pub fn valid_var_name(n: &str) -> bool {
    n.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Renders `text` with plain values: `vars` for `${name}`, `env` for `${env.NAME}`; what is
/// missing is reported in one line per problem. For manifests fetched at run time, which
/// analysis could not point into.
pub fn render_plain(
    text: &str,
    vars: &std::collections::BTreeMap<String, String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, String> {
    render(text, |r, _| match r {
        Ref::Var(name) => vars
            .get(*name)
            .cloned()
            .ok_or_else(|| format!("variable `{name}` is not set")),
        Ref::Env { name, default } => env_value(name, *default, env)
            .ok_or_else(|| format!("environment variable `{name}` is not set")),
    })
    .map_err(|errors| {
        errors
            .into_iter()
            .map(|e| match e {
                Error::Unclosed { at } => {
                    format!(
                        "unclosed `${{` at byte {} (`$${{` is a literal `${{`)",
                        at.start
                    )
                }
                Error::NotAReference { expr, .. } => {
                    format!("`${{{expr}}}` is not a variable reference")
                }
                Error::Lookup(message) => message,
            })
            .collect::<Vec<_>>()
            .join("; ")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn vars() -> BTreeMap<String, String> {
        BTreeMap::from([("hub".to_string(), "docker.io/istio".to_string())])
    }

    fn env(name: &str) -> Option<String> {
        (name == "TAG").then(|| "1.30.4".to_string())
    }

    #[test]
    fn references_escapes_and_defaults() {
        let text = "image: ${hub}/proxyv2:${env.TAG} ${env.NONE:-x} $${kept} $5 ${";
        assert_eq!(
            render_plain(&text[..text.len() - 3], &vars(), &env),
            Ok("image: docker.io/istio/proxyv2:1.30.4 x ${kept} $5".into())
        );
        assert_eq!(
            render_plain(text, &vars(), &env),
            Err("unclosed `${` at byte 60 (`$${` is a literal `${`)".into())
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_span() {
        let errors = render("${a} ${1x} ${env.B}", |r, span| {
            Err::<String, _>(format!("{r:?} at {span:?}"))
        })
        .unwrap_err();
        assert_eq!(
            errors,
            vec![
                Error::Lookup("Var(\"a\") at 0..4".to_string()),
                Error::NotAReference {
                    expr: "1x".into(),
                    at: 5..10
                },
                Error::Lookup("Env { name: \"B\", default: None } at 11..19".into()),
            ]
        );
    }
}
