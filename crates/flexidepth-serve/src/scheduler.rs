//! Continuous batching: one thread owns the model and runs steps. A step advances every sequence that has a token
//! to feed by one token, in one batched forward pass ([`flexidepth::model::Model::forward_batch`], row-invariant
//! ops: a request's tokens do not depend on what else is in the batch), then processes prompt chunks (at most
//! `prefill_chunk` tokens each) of the oldest sequences still reading their prompts, about `prefill_chunk` tokens
//! in all — so a long prompt delays the others' next token by a chunk, never by the whole prompt. New requests join
//! at step boundaries, up to `max_batch` sequences; the rest wait in a bounded queue (full: the handler answers
//! 429). A request whose client went away is dropped before the next step, and its cache with it.
//!
//! Shutdown: the queue closes (waiting requests get 503), running sequences finish until the grace period ends,
//! then the ones left are cancelled with 503.

use crate::engine::{Engine, PolicyCache};
use crate::metrics::Metrics;
use crate::request::{Event, Failure, GenRequest};
use crate::sequence::{Sequence, StepCtx};
use flexidepth::model::{BatchRow, RowInvariant};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// Batch and queue sizes.
#[derive(Debug, Clone, Copy)]
pub struct SchedulerLimits {
    /// Sequences in the running batch at most.
    pub max_batch: usize,
    /// Requests waiting for a batch slot at most.
    pub max_queue: usize,
    /// Prompt tokens processed per step at most.
    pub prefill_chunk: usize,
}

/// Why a request was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitError {
    QueueFull,
    ShuttingDown,
}

struct Job {
    req: GenRequest,
    events: UnboundedSender<Event>,
}

#[derive(Default)]
struct QueueState {
    waiting: VecDeque<Job>,
    /// Set at shutdown: when running sequences are cancelled.
    deadline: Option<Instant>,
}

/// The queue between the handlers and the scheduler thread.
pub struct Queue {
    state: Mutex<QueueState>,
    ready: Condvar,
    max_queue: usize,
    metrics: Arc<Metrics>,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queue a request; its events arrive on the returned receiver (drop it to cancel the request).
    pub fn submit(&self, req: GenRequest) -> Result<UnboundedReceiver<Event>, SubmitError> {
        let mut st = self.lock();
        if st.deadline.is_some() {
            return Err(SubmitError::ShuttingDown);
        }
        if st.waiting.len() >= self.max_queue {
            return Err(SubmitError::QueueFull);
        }
        let (events, rx) = unbounded_channel();
        st.waiting.push_back(Job { req, events });
        self.metrics
            .queue_depth
            .store(st.waiting.len() as u64, Ordering::Relaxed);
        self.ready.notify_one();
        Ok(rx)
    }

    /// Stop taking requests; running sequences have `grace` to finish.
    pub fn close(&self, grace: Duration) {
        let mut st = self.lock();
        st.deadline.get_or_insert(Instant::now() + grace);
        self.ready.notify_one();
    }

    pub fn is_closed(&self) -> bool {
        self.lock().deadline.is_some()
    }
}

/// Start the scheduler thread on `engine`; it runs until the queue is closed and its sequences are done.
pub fn start(
    engine: Engine,
    limits: SchedulerLimits,
    metrics: Arc<Metrics>,
) -> std::io::Result<(Arc<Queue>, std::thread::JoinHandle<()>)> {
    let queue = Arc::new(Queue {
        state: Mutex::new(QueueState::default()),
        ready: Condvar::new(),
        max_queue: limits.max_queue,
        metrics: metrics.clone(),
    });
    let q = queue.clone();
    // The compute runs on a rayon pool's worker, so that its parallel kernels are picked up by spinning siblings.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(candle_core::utils::get_num_threads())
        .build()
        .map_err(std::io::Error::other)?;
    let handle = std::thread::Builder::new()
        .name("flexidepth-scheduler".into())
        .spawn(move || pool.install(|| Scheduler::new(engine, limits, metrics).run(&q)))?;
    Ok((queue, handle))
}

struct Scheduler {
    engine: Engine,
    limits: SchedulerLimits,
    metrics: Arc<Metrics>,
    policies: PolicyCache,
    layer_bytes: Vec<flexidepth::model::plan::LayerBytes>,
    active: Vec<Sequence>,
}

impl Scheduler {
    fn new(engine: Engine, limits: SchedulerLimits, metrics: Arc<Metrics>) -> Self {
        Scheduler {
            policies: PolicyCache::new(engine.depth, !engine.model.routed_layers().is_empty()),
            layer_bytes: engine.model.layer_bytes(),
            engine,
            limits,
            metrics,
            active: Vec::new(),
        }
    }

    fn run(mut self, queue: &Queue) {
        loop {
            let deadline = self.admit(queue);
            if let Some(deadline) = deadline {
                if self.active.is_empty() {
                    break;
                }
                if Instant::now() >= deadline {
                    for seq in &mut self.active {
                        seq.fail(503, "the server is shutting down".into());
                    }
                    self.active.clear();
                    break;
                }
            }
            self.step();
            self.update_gauges(queue);
        }
        self.update_gauges(queue);
    }

    /// Take waiting requests into the batch (blocking while there is nothing to do); at shutdown, refuse the
    /// waiting ones. Returns the shutdown deadline, if any.
    fn admit(&mut self, queue: &Queue) -> Option<Instant> {
        let mut st = queue.lock();
        while self.active.is_empty() && st.waiting.is_empty() && st.deadline.is_none() {
            st = queue.ready.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        if st.deadline.is_some() {
            for job in st.waiting.drain(..) {
                let _ = job.events.send(Event::Error(Failure {
                    status: 503,
                    message: "the server is shutting down".into(),
                }));
            }
        }
        while self.active.len() < self.limits.max_batch {
            let Some(job) = st.waiting.pop_front() else { break };
            if job.events.is_closed() {
                self.metrics.cancelled.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let policy = self.policies.get(job.req.depth);
            self.active
                .push(Sequence::new(&self.engine.model, job.req, job.events, policy));
        }
        self.metrics
            .queue_depth
            .store(st.waiting.len() as u64, Ordering::Relaxed);
        st.deadline
    }

    /// Drop cancelled sequences, advance every decoding sequence by one token, then one prompt chunk.
    fn step(&mut self) {
        let before = self.active.len();
        self.active.retain(|s| !s.cancelled());
        let cancelled = before - self.active.len();
        self.metrics.cancelled.fetch_add(cancelled as u64, Ordering::Relaxed);
        let ctx = StepCtx {
            model: &self.engine.model,
            tokenizer: &self.engine.tokenizer,
            eos_token_ids: &self.engine.eos_token_ids,
            layer_bytes: &self.layer_bytes,
            metrics: &self.metrics,
        };
        decode_step(&ctx, &mut self.active);
        // Prompt chunks, oldest sequence first, until the step's budget is spent. A prompt's chunk boundaries are
        // fixed (every `prefill_chunk` tokens from its start), so that its numbers never depend on the others.
        let mut budget = self.limits.prefill_chunk;
        for seq in self.active.iter_mut().filter(|s| s.needs_prefill()) {
            if budget == 0 {
                break;
            }
            match seq.prefill(&ctx, self.limits.prefill_chunk) {
                Ok(tokens) => budget = budget.saturating_sub(tokens),
                Err(e) => seq.fail(500, format!("the model failed on this prompt: {e}")),
            }
        }
        self.active.retain(|s| !s.done);
    }

    fn update_gauges(&self, queue: &Queue) {
        let model = &self.engine.model;
        let kv: u64 = self.active.iter().map(|s| s.cache_bytes(model)).sum();
        self.metrics.kv_cache_bytes.store(kv, Ordering::Relaxed);
        self.metrics
            .active_sequences
            .store(self.active.len() as u64, Ordering::Relaxed);
        self.metrics
            .queue_depth
            .store(queue.lock().waiting.len() as u64, Ordering::Relaxed);
    }
}

/// One batched forward pass over every sequence with a token to feed, then each samples its next token.
fn decode_step(ctx: &StepCtx, active: &mut [Sequence]) {
    let mut seqs: Vec<&mut Sequence> = active.iter_mut().filter(|s| s.next.is_some() && !s.done).collect();
    if seqs.is_empty() {
        return;
    }
    let out = {
        let mut rows: Vec<BatchRow> = seqs
            .iter_mut()
            .map(|s| {
                let s = &mut **s;
                BatchRow {
                    token: s.next.unwrap_or_default(),
                    cache: &mut s.cache,
                    policy: s.policy.as_ref(),
                }
            })
            .collect();
        batch_logits(ctx, &mut rows)
    };
    ctx.metrics.decode_steps.fetch_add(1, Ordering::Relaxed);
    ctx.metrics.decode_rows.fetch_add(seqs.len() as u64, Ordering::Relaxed);
    match out {
        Ok((logits, layers)) => {
            for ((seq, row), layers) in seqs.into_iter().zip(&logits).zip(layers) {
                if let Err(e) = seq.accept(ctx, row, layers) {
                    seq.fail(500, format!("cannot continue this sequence: {e}"));
                }
            }
        }
        Err(e) => {
            for seq in seqs {
                seq.fail(500, format!("the model failed in a decode step: {e}"));
            }
        }
    }
}

/// The batched pass: each row's logits and the layers its pass used.
fn batch_logits(ctx: &StepCtx, rows: &mut [BatchRow]) -> flexidepth::Result<(Vec<Vec<f32>>, Vec<f64>)> {
    let out = ctx.model.forward_batch(&RowInvariant, rows)?;
    let layers = out.plans.iter().map(|p| p.layers_used(0, ctx.layer_bytes)).collect();
    Ok((out.logits.to_vec2()?, layers))
}
