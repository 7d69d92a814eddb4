//! Alert rules from one template: `deploy/prometheus/alerts.template.yml`.
//!
//! Every threshold and window is a `# llmload:param NAME=default  help`
//! line in the template; `${NAME}` in the body is replaced by its value.
//! The shipped `alerts.yml` is this rendering with the defaults (a test
//! checks it is current), and tests render the same template with short
//! windows, so what fires in tests is what ships.

use std::collections::BTreeMap;

/// The template, compiled in so `llmload alert-rules` works anywhere.
pub const TEMPLATE: &str = include_str!("../../deploy/prometheus/alerts.template.yml");

const PARAM: &str = "# llmload:param ";

/// The template's parameters and their defaults, in order.
pub fn params(template: &str) -> Vec<(String, String)> {
    template
        .lines()
        .filter_map(|l| l.strip_prefix(PARAM))
        .filter_map(|rest| {
            let (assign, _help) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
            let (k, v) = assign.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

/// Render with `overrides` applied on top of the defaults. The param
/// comment lines are rewritten to show the values used.
pub fn render(template: &str, overrides: &[(String, String)]) -> Result<String, String> {
    let mut values: BTreeMap<String, String> = params(template).into_iter().collect();
    for (k, v) in overrides {
        if !values.contains_key(k) {
            let known: Vec<&str> = values.keys().map(String::as_str).collect();
            return Err(format!(
                "unknown alert parameter '{k}' (parameters: {})",
                known.join(", ")
            ));
        }
        if v.trim().is_empty() || v.contains(char::is_whitespace) {
            return Err(format!("alert parameter {k}='{v}' must be one word"));
        }
        values.insert(k.clone(), v.clone());
    }
    let mut out = String::with_capacity(template.len());
    for line in template.lines() {
        if let Some(rest) = line.strip_prefix(PARAM) {
            let (assign, help) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
            let k = assign.split_once('=').map_or(assign, |(k, _)| k);
            let v = &values[k];
            let pad = (assign.len() + 1)
                .saturating_sub(k.len() + 1 + v.len())
                .max(1);
            out.push_str(&format!(
                "{PARAM}{k}={v}{}{}",
                " ".repeat(pad),
                help.trim_start()
            ));
        } else {
            out.push_str(&substitute(line, &values)?);
        }
        out.push('\n');
    }
    Ok(out)
}

fn substitute(line: &str, values: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = line;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unclosed ${{ in: {line}"))?;
        let name = &after[..end];
        let v = values
            .get(name)
            .ok_or_else(|| format!("${{{name}}} has no `# llmload:param` line"))?;
        out.push_str(v);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_rules_are_the_rendered_template() {
        let shipped = include_str!("../../deploy/prometheus/alerts.yml");
        assert_eq!(
            render(TEMPLATE, &[]).unwrap(),
            shipped,
            "deploy/prometheus/alerts.yml is stale: run `llmload alert-rules > deploy/prometheus/alerts.yml`"
        );
    }

    #[test]
    fn params_and_overrides() {
        let p = params(TEMPLATE);
        assert!(p.iter().any(|(k, v)| k == "CAPACITY_LOOKBACK" && v == "7d"));
        let r = render(TEMPLATE, &[("CAPACITY_LOOKBACK".into(), "5m".into())]).unwrap();
        assert!(r.contains("llmload_capacity_max_qps_without_errors[5m]"));
        assert!(r.contains("# llmload:param CAPACITY_LOOKBACK=5m"));
        assert!(!r.contains("${"));
        assert!(
            render(TEMPLATE, &[("NOPE".into(), "1".into())])
                .unwrap_err()
                .contains("NOPE")
        );
        assert!(
            render("x ${MISSING}\n", &[])
                .unwrap_err()
                .contains("MISSING")
        );
    }
}
