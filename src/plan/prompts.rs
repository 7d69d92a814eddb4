//! The prompts of a run: read from a dataset file or generated, counted
//! with the tokenizer when there is one, and prepared as request bodies,
//! with the `workload` record for `metadata.json`.

use crate::plan::target::Target;
use crate::workload::dataset::{Conversation, DatasetError};
use crate::workload::request::{PreparedRequest, prepare_counted, prompt_text};
use crate::workload::synthetic::{TokenCount, estimate_tokens};
use crate::workload::tokenizer::Tokenizer;
use crate::workload::{Api, Format, LengthStats, Source, Workload};
use std::path::Path;

/// A trace replay of `path`: the trace read (errors name the file, the
/// line and the field), its prompts made with the tokenizer's one-token
/// words when there is one, and `ignore_eos` on so that every request
/// generates its trace length.
pub fn load_trace(
    path: &Path,
    format: Option<crate::workload::trace::TraceFormat>,
    tokenizer: Option<&Path>,
    seed: u64,
    target: &Target,
    options: crate::plan::replay::ReplayOptions,
) -> Result<crate::plan::replay::Replay, String> {
    let trace = crate::workload::files::load_trace(path, format)?;
    replay_of(std::sync::Arc::new(trace), tokenizer, seed, target, options)
}

/// A replay of a trace already read (a daemon job reads its trace once,
/// with its configuration).
pub fn replay_of(
    trace: std::sync::Arc<crate::workload::trace::Trace>,
    tokenizer: Option<&Path>,
    seed: u64,
    target: &Target,
    options: crate::plan::replay::ReplayOptions,
) -> Result<crate::plan::replay::Replay, String> {
    let words = match tokenizer {
        Some(p) => {
            let tok = Tokenizer::load(p).map_err(|e| format!("--tokenizer {e}"))?;
            Some(crate::workload::synthetic::usable_words(&tok))
        }
        None => None,
    };
    let mut params = target.body_params();
    params.ignore_eos = true;
    crate::plan::replay::Replay::new(
        trace,
        options,
        crate::workload::trace::TracePrompts::new(words, seed),
        params,
    )
}

/// A run's prepared requests and what they are.
pub struct Prompts {
    pub requests: Vec<PreparedRequest>,
    /// Multi-turn sessions (then `requests` are their first turns, for
    /// warm-ups).
    pub sessions: Option<Vec<crate::workload::session::Session>>,
    pub workload: Workload,
    /// Worth saying once (entries skipped, lengths approximate).
    pub notices: Vec<String>,
}

/// Read or generate the prompts of `dataset` (a path or `synthetic:…`).
pub fn load(
    dataset: &str,
    format: Option<Format>,
    tokenizer: Option<&Path>,
    seed: u64,
    target: &Target,
) -> Result<Prompts, DatasetError> {
    load_with(dataset, format, tokenizer, seed, target, false)
}

/// [`load`]; `sessions`: a ShareGPT file's entries become multi-turn
/// sessions (JSONL and synthetic specs say so themselves).
pub fn load_with(
    dataset: &str,
    format: Option<Format>,
    tokenizer: Option<&Path>,
    seed: u64,
    target: &Target,
    sessions: bool,
) -> Result<Prompts, DatasetError> {
    let source = Source::parse(dataset, format).map_err(DatasetError::Setting)?;
    let tok = match tokenizer {
        Some(p) => Some(
            Tokenizer::load(p).map_err(|e| DatasetError::Setting(format!("--tokenizer {e}")))?,
        ),
        None => None,
    };
    let mut notices = Vec::new();
    let mut sessions_out = None;
    let (convs, counts, format_name, synthetic): (Vec<Conversation>, Vec<u32>, String, _) =
        match &source {
            Source::Synthetic(spec) => {
                if sessions {
                    return Err(DatasetError::Setting(format!(
                        "{dataset}: --sessions reads a ShareGPT file's turns; a synthetic spec makes sessions with turns=T,turn_input=K"
                    )));
                }
                let tc = tok.as_ref().map(|t| t as &dyn TokenCount);
                let g = crate::workload::synthetic::generate(spec, seed, tc)
                    .map_err(|e| DatasetError::Setting(format!("{dataset}: {e}")))?;
                if spec.turns > 1 {
                    let mut s = crate::workload::synthetic::generate_sessions(spec, seed, tc)
                        .map_err(|e| DatasetError::Setting(format!("{dataset}: {e}")))?;
                    if tc.is_none() {
                        // Estimates, not counts: never compared with the
                        // server's.
                        s.iter_mut()
                            .flat_map(|s| &mut s.turns)
                            .for_each(|t| t.new_tokens = None);
                    }
                    sessions_out = Some(s);
                }
                let (convs, counts) = g.into_iter().unzip();
                (convs, counts, "synthetic".to_string(), Some(spec.clone()))
            }
            Source::File { path, format } => {
                let (loaded, sessions) = crate::workload::files::load_as(path, *format, sessions)?;
                if loaded.multi_turn > 0 {
                    notices.push(format!(
                        "{}: {} entries have several human turns; each is sent once, up to its last (--sessions replays them turn by turn, with the server's replies)",
                        path.display(),
                        loaded.multi_turn
                    ));
                }
                if let Some(s) = sessions {
                    let counted: Vec<crate::workload::session::Session> = s
                        .into_iter()
                        .map(|mut s| {
                            for (k, t) in s.turns.iter_mut().enumerate() {
                                // A first turn is counted as a single
                                // request would be (completions join it).
                                t.new_tokens = tok.as_ref().map(|tk| {
                                    let c = Conversation {
                                        messages: t.messages.clone(),
                                        max_tokens: None,
                                    };
                                    if k == 0 {
                                        count(&c, target.api, Some(tk))
                                    } else {
                                        c.messages.iter().map(|m| tk.count(&m.content) as u32).sum()
                                    }
                                });
                            }
                            s
                        })
                        .collect();
                    sessions_out = Some(counted);
                }
                if loaded.skipped > 0 {
                    notices.push(format!(
                        "{}: {} of {} entries have no human turn and were skipped",
                        path.display(),
                        loaded.skipped,
                        loaded.skipped + loaded.conversations.len()
                    ));
                }
                let counts = loaded
                    .conversations
                    .iter()
                    .map(|c| count(c, target.api, tok.as_ref()))
                    .collect();
                (
                    loaded.conversations,
                    counts,
                    loaded.format.as_str().to_string(),
                    None,
                )
            }
        };
    if tok.is_none() && synthetic.is_some() {
        notices.push(
            "no --tokenizer: synthetic prompt lengths are estimates (4 characters a token)".into(),
        );
    }
    let params = target.body_params();
    let exact = tok.is_some();
    let requests = prepare_counted(&convs, &params, &|i| exact.then(|| counts[i]));
    let workload = Workload {
        format: format_name,
        api: target.api.as_str().into(),
        tokenizer: tok.as_ref().map(|t| t.info.clone()),
        token_counts: if exact { "exact" } else { "approximate" }.into(),
        synthetic,
        samples: convs.len(),
        input_tokens: LengthStats::of(counts.iter().copied()),
        output_tokens: LengthStats::of(
            convs
                .iter()
                .map(|c| c.max_tokens.unwrap_or(target.max_tokens)),
        ),
        seed,
        ignore_eos: target.ignore_eos,
        extra_body_keys: target.extra_body.keys().cloned().collect(),
        sessions: sessions_out
            .as_ref()
            .map(|s| crate::workload::SessionsInfo::of(s)),
    };
    Ok(Prompts {
        requests,
        sessions: sessions_out,
        workload,
        notices,
    })
}

/// A conversation's prompt tokens as sent: with the tokenizer, the text
/// of its messages (chat) or its prompt (completions); without, the
/// 4-characters estimate. The server's chat template adds its own.
fn count(c: &Conversation, api: Api, tok: Option<&Tokenizer>) -> u32 {
    match (tok, api) {
        (Some(t), Api::Chat) => c.messages.iter().map(|m| t.count(&m.content) as u32).sum(),
        (Some(t), Api::Completions) => t.count(&prompt_text(c)) as u32,
        (None, _) => estimate_tokens(c.text_chars()),
    }
}
