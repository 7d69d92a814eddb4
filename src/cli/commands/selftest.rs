//! `llmload selftest`: measure the client itself (see `selftest` module).

use crate::base::error::{EXIT_FAILURE, EXIT_OK};
use crate::cli::SelftestArgs;

pub async fn selftest(args: SelftestArgs) -> anyhow::Result<u8> {
    let opts = crate::selftest::Options {
        quick: args.quick,
        skip_nginx: args.skip_nginx,
        only: args.only.clone(),
    };
    let log = |l: &str| crate::errln!("{l}");
    if args.only.iter().any(|o| o == "soak") {
        log(&format!(
            "soak: {} minute(s) at {} req/s against the mock with every fault kind at 1 %",
            args.soak_minutes, args.soak_rate
        ));
        let minutes = crate::selftest::soak(args.soak_minutes, args.soak_rate, &log)
            .await
            .map_err(anyhow::Error::msg)?;
        let ok = minutes.iter().all(|m| m.balanced);
        crate::outln!("{}", serde_json::json!({ "soak": minutes }));
        return Ok(if ok { EXIT_OK } else { EXIT_FAILURE });
    }
    let report = crate::selftest::run(&opts, &log)
        .await
        .map_err(anyhow::Error::msg)?;
    crate::out!("{}", crate::selftest::render(&report));
    crate::outln!("{}", serde_json::json!({ "selftest": report }));
    Ok(
        if args.strict && report.targets.iter().any(|t| t.verdict != "met") {
            EXIT_FAILURE
        } else {
            EXIT_OK
        },
    )
}
