//! Self-speculative decoding on an early exit (LayerSkip, Elhoushi et al., ACL 2024, §4): the model's own first
//! `L` layers plus the final norm and head ([`EarlyExit`]) draft `k` tokens one at a time; one full-depth pass over
//! the `k + 1` rows (the last accepted token and the drafts) verifies them; the drafts that match what full depth
//! would choose are accepted, followed by full depth's own next token, and the cache is rolled back
//! ([`KvCache::truncate`]) past the last accepted position.
//!
//! KV cache: one cache shared by draft and verification, as LayerSkip shares it. The draft reads the full model's
//! K/V of layers `< L` for every accepted position and writes its own for the drafted positions; verification then
//! recomputes every layer of the `k + 1` rows (a simpler scheme than LayerSkip's reuse of the exit layer's hidden
//! states; on memory-bound decode both read each weight once per cycle), overwriting the draft's K/V, so the cache
//! always holds exactly full depth's K/V of the accepted tokens.
//!
//! Greedy only: the token full depth picks at each verified row is the sampler's greedy choice over the history up
//! to that row (repeat penalty included), so the output equals greedy full-depth decoding (up to floating-point
//! differences between a `k + 1`-row pass and one-row passes). Sampling is refused (speculative sampling's
//! rejection rule is not implemented).

use super::{GenerateOptions, Generation, GenerationStats, StopReason, StopStrings, TokenStream};
use crate::cache::KvCache;
use crate::depth::early_exit::EarlyExit;
use crate::error::{Error, Result};
use crate::generate::Sampler;
use crate::model::{Logits, Model};
use crate::tokenizer::Tokenizer;
use std::time::Instant;

/// Draft settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpeculativeOptions {
    /// `L`: the draft runs layers `0..exit_after` (1 ≤ L < layers).
    pub exit_after: usize,
    /// `k`: tokens drafted per cycle (≥ 1).
    pub draft_tokens: usize,
}

/// What drafting and verification did.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SpeculativeStats {
    /// Draft tokens proposed and accepted.
    pub drafted: usize,
    pub accepted: usize,
    /// Draft-verify cycles.
    pub cycles: usize,
    /// Layer passes of the decode (after the prefill): `L` per draft step plus all layers per verification
    /// (one pass reads each weight once, whatever its rows).
    pub layer_passes: usize,
    /// Tokens the decode produced (the prefill's first token excluded).
    pub decoded: usize,
}

impl SpeculativeStats {
    /// Accepted over drafted tokens, in `[0, 1]`.
    pub fn acceptance_rate(&self) -> f64 {
        self.accepted as f64 / self.drafted.max(1) as f64
    }
    /// Layer passes per decoded token (full-depth decoding: the layer count).
    pub fn layers_per_token(&self) -> f64 {
        self.layer_passes as f64 / self.decoded.max(1) as f64
    }
}

/// Tokens in, text out: stop tokens, stop strings and the running text, shared by every accepted token.
struct Emitter<'a> {
    tokenizer: &'a Tokenizer,
    opts: &'a GenerateOptions,
    detok: TokenStream,
    stops: StopStrings,
    ids: Vec<u32>,
    text: String,
    on_text: &'a mut dyn FnMut(&str) -> Result<()>,
}

impl Emitter<'_> {
    /// Take token `id`; `Some(reason)` when generation ends with it.
    fn push(&mut self, id: u32) -> Result<Option<StopReason>> {
        self.ids.push(id);
        if self.opts.eos_token_ids.contains(&id) {
            return Ok(Some(StopReason::Eos));
        }
        if let Some(piece) = self.detok.push(self.tokenizer, id)? {
            let (shown, stopped) = self.stops.push(&piece);
            self.show(&shown)?;
            if stopped {
                return Ok(Some(StopReason::StopString));
            }
        }
        Ok((self.ids.len() >= self.opts.max_new_tokens).then_some(StopReason::MaxTokens))
    }

    fn show(&mut self, piece: &str) -> Result<()> {
        if !piece.is_empty() {
            self.text.push_str(piece);
            (self.on_text)(piece)?;
        }
        Ok(())
    }
}

/// Greedy generation from `prompt_ids` by self-speculative decoding (see the module docs); `opts.policy` and
/// `opts.trace` are not used (drafts exit early, verification is full depth).
///
/// Errors: sampling other than greedy, `exit_after` outside `1..layers`, `draft_tokens == 0`, and those of
/// [`super::generate`].
pub fn generate_self_speculative(
    model: &Model,
    tokenizer: &Tokenizer,
    prompt_ids: &[u32],
    opts: &GenerateOptions,
    spec: SpeculativeOptions,
    on_text: &mut dyn FnMut(&str) -> Result<()>,
) -> Result<(Generation, SpeculativeStats)> {
    let n = model.layers.len();
    if opts.sampling.temperature > 0.0 {
        return Err(Error::Unsupported(
            "self-speculative decoding is greedy only (temperature 0): speculative sampling is not implemented".into(),
        ));
    }
    if spec.exit_after == 0 || spec.exit_after >= n {
        return Err(Error::Input(format!(
            "self-speculative: the draft exits after {} layers; use 1..{n} (the model has {n})",
            spec.exit_after
        )));
    }
    if spec.draft_tokens == 0 {
        return Err(Error::Input("self-speculative: draft at least one token".into()));
    }
    super::check_request(model, prompt_ids, opts)?;
    let mut em = Emitter {
        tokenizer,
        opts,
        detok: TokenStream::new(),
        stops: StopStrings::new(opts.stop_strings.clone()),
        ids: Vec::new(),
        text: String::new(),
        on_text,
    };
    let mut stats = SpeculativeStats::default();
    let start = Instant::now();
    let (mut reason, prefill_s, first_at) = if opts.max_new_tokens == 0 {
        (StopReason::MaxTokens, 0.0, start)
    } else {
        let mut cache = model.new_cache(prompt_ids.len().saturating_add(opts.max_new_tokens));
        let mut sampler = Sampler::new(opts.sampling.clone());
        let mut history = prompt_ids.to_vec();
        let logits = model.forward(prompt_ids, &mut cache, Logits::Last)?;
        let prefill_s = start.elapsed().as_secs_f64();
        let first = sampler.sample(&logits.squeeze(0)?.to_vec1::<f32>()?, &history);
        let first_at = Instant::now();
        history.push(first);
        let reason = match em.push(first)? {
            Some(r) => r,
            None => decode(model, &mut cache, &mut sampler, &mut history, &mut em, spec, &mut stats)?,
        };
        (reason, prefill_s, first_at)
    };
    if reason != StopReason::StopString {
        let rest = em.detok.finish(tokenizer)?;
        let (shown, stopped) = em.stops.push(&rest);
        em.show(&shown)?;
        let tail = em.stops.finish();
        em.show(&tail)?;
        if stopped {
            reason = StopReason::StopString;
        }
    }
    let end = Instant::now();
    stats.decoded = em.ids.len().saturating_sub(1);
    Ok((
        Generation {
            stats: GenerationStats {
                prompt_tokens: prompt_ids.len(),
                generated_tokens: em.ids.len(),
                time_to_first_token_s: (first_at.max(start) - start).as_secs_f64(),
                prefill_s,
                decode_s: (end - first_at.max(start)).as_secs_f64(),
                stop_reason: reason,
            },
            ids: em.ids,
            text: em.text,
            trace: None,
        },
        stats,
    ))
}

/// Draft-verify cycles after the first token (the last of `history`, not yet in `cache`) until a stop.
fn decode(
    model: &Model,
    cache: &mut KvCache,
    sampler: &mut Sampler,
    history: &mut Vec<u32>,
    em: &mut Emitter,
    spec: SpeculativeOptions,
    stats: &mut SpeculativeStats,
) -> Result<StopReason> {
    let n = model.layers.len();
    let draft_policy = EarlyExit {
        exit_after: spec.exit_after,
    };
    loop {
        let pos = cache.len();
        let next = *history.last().unwrap_or(&0);
        // Room: the verification writes k + 1 positions; more drafts than tokens still wanted are wasted.
        let room = cache.max_len().saturating_sub(pos);
        if room == 0 {
            return Ok(StopReason::ContextFull);
        }
        let wanted = em.opts.max_new_tokens - em.ids.len();
        let k = spec.draft_tokens.min(room - 1).min(wanted.saturating_sub(1));
        let mut drafts = Vec::with_capacity(k);
        let mut draft_history = history.clone();
        let mut feed = next;
        for _ in 0..k {
            let out = model.forward_with(&[feed], cache, Logits::Last, &draft_policy)?;
            feed = sampler.sample(&out.logits.squeeze(0)?.to_vec1::<f32>()?, &draft_history);
            draft_history.push(feed);
            drafts.push(feed);
        }
        stats.layer_passes += k * spec.exit_after + n;
        stats.drafted += k;
        stats.cycles += 1;
        // Verify: full depth over [next, d1..dk] at pos.., overwriting the draft's K/V.
        cache.truncate(pos);
        let mut rows = vec![next];
        rows.extend_from_slice(&drafts);
        let logits: Vec<Vec<f32>> = model.forward(&rows, cache, Logits::All)?.to_vec2()?;
        let (mut accepted, mut kept, mut stop) = (0, 0, None);
        for (j, row) in logits.iter().enumerate() {
            let target = sampler.sample(row, history);
            history.push(target);
            kept = j + 1;
            let matched = j < k && drafts[j] == target;
            accepted += usize::from(matched);
            stop = em.push(target)?;
            if stop.is_some() || !matched {
                break;
            }
        }
        // Positions pos..pos + kept hold full depth's K/V of accepted inputs; the rest is rolled back.
        cache.truncate(pos + kept);
        stats.accepted += accepted;
        if let Some(reason) = stop {
            return Ok(reason);
        }
    }
}
