//! A running server: the scheduler thread (the model) and the HTTP thread (a small tokio runtime serving axum),
//! started together and stopped together.

use crate::config::ServeConfig;
use crate::engine::Engine;
use crate::http::{router, stream::now_secs, AppState};
use crate::metrics::Metrics;
use crate::scheduler::{self, Queue, SchedulerLimits};
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::oneshot;

/// After the scheduler has stopped, open connections (a client that stopped reading a stream) get this long to
/// close before the runtime drops them.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// The HTTP thread's worker threads: handlers only parse, tokenize and format, the scheduler computes.
const HTTP_WORKERS: usize = 2;

/// A server started with [`Server::start`]; stopped by [`Server::shutdown`] (or when dropped).
pub struct Server {
    addr: SocketAddr,
    queue: Arc<Queue>,
    metrics: Arc<Metrics>,
    grace: Duration,
    stop_accepting: Option<oneshot::Sender<()>>,
    force_close: Option<oneshot::Sender<()>>,
    threads: Option<(JoinHandle<()>, JoinHandle<()>)>,
}

impl Server {
    /// Bind `config.addr` (port 0: any free port, see [`Server::addr`]) and start serving `engine`.
    pub fn start(engine: Engine, config: ServeConfig) -> std::io::Result<Server> {
        let listener = std::net::TcpListener::bind(config.addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let metrics = Arc::new(Metrics::default());
        let info = engine.info();
        let tokenizer = engine.tokenizer.clone();
        let limits = SchedulerLimits {
            max_batch: config.max_batch.max(1),
            max_queue: config.max_queue,
            prefill_chunk: config.prefill_chunk.max(1),
        };
        let (queue, scheduler) = scheduler::start(engine, limits, metrics.clone())?;
        let grace = config.shutdown_grace;
        let state = Arc::new(AppState {
            config,
            info,
            tokenizer,
            queue: queue.clone(),
            metrics: metrics.clone(),
            created: now_secs(),
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(HTTP_WORKERS)
            .thread_name("flexidepth-http")
            .enable_all()
            .build()?;
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (force_tx, force_rx) = oneshot::channel::<()>();
        let http = std::thread::Builder::new()
            .name("flexidepth-http".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let serve = async {
                        let listener = tokio::net::TcpListener::from_std(listener)?;
                        axum::serve(listener, router(state))
                            .with_graceful_shutdown(async {
                                let _ = stop_rx.await;
                            })
                            .await
                    };
                    tokio::select! {
                        r = serve => if let Err(e) = r { eprintln!("serve: the HTTP server failed: {e}") },
                        _ = force_rx => {}
                    }
                });
            })?;
        Ok(Server {
            addr,
            queue,
            metrics,
            grace,
            stop_accepting: Some(stop_tx),
            force_close: Some(force_tx),
            threads: Some((scheduler, http)),
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's counters (what `/metrics` shows).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Stop: new requests get 503 and no new connections are taken; running requests finish within the grace
    /// period (then they are cancelled); returns when both threads have ended.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let Some((scheduler, http)) = self.threads.take() else {
            return;
        };
        self.queue.close(self.grace);
        if let Some(tx) = self.stop_accepting.take() {
            let _ = tx.send(());
        }
        let _ = scheduler.join();
        // Every request has ended; a connection still open belongs to a client that is not reading.
        let waiting = std::time::Instant::now();
        while !http.is_finished() && waiting.elapsed() < CLOSE_WAIT {
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Some(tx) = self.force_close.take() {
            let _ = tx.send(());
        }
        let _ = http.join();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}
