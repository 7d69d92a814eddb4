//! `llmload alert-rules`: print the Prometheus alert rules, rendered from
//! the template with its defaults or `--set NAME=VALUE` overrides.

use crate::base::error::{EXIT_OK, UsageError};
use crate::cli::AlertRulesArgs;

pub fn alert_rules(args: AlertRulesArgs) -> anyhow::Result<u8> {
    let template = match &args.template {
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| UsageError::new(format!("{}: {e}", p.display())))?,
        None => crate::observe::alerts::TEMPLATE.to_string(),
    };
    if args.list {
        for (k, v) in crate::observe::alerts::params(&template) {
            crate::outln!("{k}={v}");
        }
        return Ok(EXIT_OK);
    }
    let overrides = args
        .set
        .iter()
        .map(|s| {
            s.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| UsageError::new(format!("--set '{s}': expected NAME=VALUE")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let out = crate::observe::alerts::render(&template, &overrides).map_err(UsageError::new)?;
    crate::out!("{out}");
    Ok(EXIT_OK)
}
