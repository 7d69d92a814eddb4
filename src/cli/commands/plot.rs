//! `llmload plot <run-dir>`: redraw the PNG from the results JSON alone.

use crate::analysis::level::LevelResult;
use crate::base::error::{EXIT_OK, UsageError};
use crate::cli::PlotArgs;
use crate::results::{METADATA_FILE, Metadata, RunDir, file_name_only};
use anyhow::Context;

pub fn plot(args: PlotArgs) -> anyhow::Result<u8> {
    if !args.run_dir.is_dir() {
        return Err(UsageError::new(format!(
            "{}: not a results directory",
            args.run_dir.display()
        ))
        .into());
    }
    let dir = RunDir::open(&args.run_dir);
    let input = file_name_only(&args.input, crate::results::DEFAULT_RESULTS_FILE);
    let levels: Vec<LevelResult> = dir.read_json(&input).map_err(UsageError::new)?;
    let title = match dir.read_json::<Metadata>(METADATA_FILE) {
        Ok(m) if m.partial => format!("{} (partial)", m.plot_title()),
        Ok(m) => m.plot_title(),
        Err(_) => format!("llmload run {}", dir.id),
    };
    // The summary as written (SLO, capacity), else one made from the levels.
    let summary = dir
        .read_json::<crate::results::Summary>(crate::results::SUMMARY_FILE)
        .unwrap_or_else(|_| crate::results::summarize(&levels, "complete"));
    let out = dir.file(&file_name_only(
        &args.output,
        crate::results::DEFAULT_PLOT_FILE,
    ));
    crate::results::plot::render(&out, &levels, &summary, &title)
        .with_context(|| format!("drawing {}", out.display()))?;
    crate::outln!("{}", out.display());
    Ok(EXIT_OK)
}
