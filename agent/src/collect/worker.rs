//! The collector thread: collections run on one dedicated thread, one
//! after another, and its results go back to the scheduler in batches.
//! A thread per collection (tokio's blocking pool) cost a wake-up and a
//! context switch each way per container, about a third of the agent's
//! CPU at 5,000 containers.
//!
//! A collection that hangs (a frozen cgroup, a stuck filesystem) holds up
//! only itself: the scheduler sees it through [`Worker::stuck`], abandons
//! the thread and starts another. The abandoned thread reports once its
//! read returns, then exits; until then the path it hangs in is not tried
//! again, so a path that hangs for good costs one thread, not one a retry.

use std::{
    panic::AssertUnwindSafe,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc::{self, TryRecvError},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use tokio::sync::mpsc::UnboundedSender;

use super::{iter::Round, Collector, Job};
use crate::cgroup::stats::Sample;

/// One collection to run.
pub struct Work {
    pub job: Arc<Job>,
    pub generation: u64,
    pub round: Option<Arc<Round>>,
}

/// One collection's outcome: `None` if it failed (panicked).
pub type Done = (Arc<str>, u64, Option<Sample>);

/// Results are sent at least this often while work is queued.
const BATCH: usize = 64;

#[derive(Default)]
struct State {
    /// False once the scheduler has given up on this thread.
    alive: AtomicBool,
    /// The collection running now: path, generation, start.
    current: Mutex<Option<(Arc<str>, u64, Instant)>>,
}

pub struct Worker {
    /// Tags this thread's results, so an abandoned one's are ignored.
    pub id: u64,
    tx: mpsc::Sender<Work>,
    state: Arc<State>,
}

impl Worker {
    pub fn spawn(
        id: u64,
        collector: Arc<Collector>,
        done: UnboundedSender<(u64, Vec<Done>)>,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let state = Arc::new(State {
            alive: AtomicBool::new(true),
            current: Mutex::default(),
        });
        let s = state.clone();
        std::thread::Builder::new()
            .name("cgscope-collect".into())
            .spawn(move || run(id, &collector, &rx, &done, &s))?;
        Ok(Self { id, tx, state })
    }

    /// Queues a collection; gives it back if the thread is gone.
    pub fn send(&self, work: Work) -> Result<(), Work> {
        self.tx.send(work).map_err(|e| e.0)
    }

    /// The collection running longer than `limit`, if any.
    pub fn stuck(&self, limit: Duration) -> Option<(Arc<str>, u64)> {
        let current = self.state.current.lock().unwrap_or_else(|e| e.into_inner());
        current
            .as_ref()
            .filter(|(_, _, started)| started.elapsed() > limit)
            .map(|(path, generation, _)| (path.clone(), *generation))
    }

    /// Lets the thread go: it exits after the collection it is in.
    pub fn abandon(self) {
        self.state.alive.store(false, Ordering::Relaxed);
    }
}

fn run(
    id: u64,
    collector: &Collector,
    rx: &mpsc::Receiver<Work>,
    done: &UnboundedSender<(u64, Vec<Done>)>,
    state: &State,
) {
    let mut batch = Vec::new();
    let flush = |batch: &mut Vec<Done>| {
        !batch.is_empty() && done.send((id, std::mem::take(batch))).is_err()
    };
    loop {
        let work = match rx.try_recv() {
            Ok(w) => w,
            Err(TryRecvError::Empty) => {
                // Nothing queued: report, then sleep until there is.
                if flush(&mut batch) {
                    return;
                }
                match rx.recv() {
                    Ok(w) => w,
                    Err(_) => return,
                }
            }
            Err(TryRecvError::Disconnected) => {
                flush(&mut batch);
                return;
            }
        };
        if !state.alive.load(Ordering::Relaxed) {
            // Tells the scheduler this thread is gone (with the collection
            // it was abandoned in, which it ignores).
            flush(&mut batch);
            return;
        }
        let path = work.job.path.clone();
        *state.current.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((path.clone(), work.generation, Instant::now()));
        let sample = std::panic::catch_unwind(AssertUnwindSafe(|| {
            collector.collect(&work.job, work.round.as_deref())
        }))
        .ok();
        *state.current.lock().unwrap_or_else(|e| e.into_inner()) = None;
        batch.push((path, work.generation, sample));
        if !state.alive.load(Ordering::Relaxed) {
            flush(&mut batch);
            return;
        }
        if batch.len() >= BATCH && flush(&mut batch) {
            return;
        }
    }
}
