//! The agent's long-lived tasks, watched. Each runs for the life of the
//! process; one that ends or panics leaves the agent serving stale or
//! partial data, so the first to end fails `/healthz` with its name and ends
//! the process, non-zero, for its supervisor (the DaemonSet, systemd) to
//! restart it.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    future::Future,
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex, OnceLock},
};

use tokio::{
    signal::unix::{signal, SignalKind},
    sync::oneshot,
    task::{Id, JoinSet},
};

use crate::errors::Chain;

/// Whether every task still runs, and which parts are down while they
/// restart themselves; shared with `/healthz` and `cgscope_mode`.
#[derive(Debug, Clone, Default)]
pub struct Health {
    exit: Arc<OnceLock<Exit>>,
    /// Subsystem → why its source is down.
    down: Arc<Mutex<BTreeMap<&'static str, String>>>,
}

impl Health {
    /// The first task that ended, if one did.
    pub fn failed(&self) -> Option<&Exit> {
        self.exit.get()
    }

    fn fail(&self, exit: Exit) {
        // Only the first failure is the cause; the rest follow from it.
        let _ = self.exit.set(exit);
    }

    /// `subsystem`'s source failed and is being restarted.
    pub fn down(&self, subsystem: &'static str, why: String) {
        self.parts().insert(subsystem, why);
    }

    /// `subsystem`'s source is back.
    pub fn up(&self, subsystem: &'static str) {
        self.parts().remove(subsystem);
    }

    pub fn is_down(&self, subsystem: &str) -> bool {
        self.parts().contains_key(subsystem)
    }

    /// What is wrong, for `/healthz`: the task that ended, else the parts
    /// that are down.
    pub fn problem(&self) -> Option<String> {
        if let Some(exit) = self.failed() {
            return Some(exit.to_string());
        }
        let parts = self.parts();
        (!parts.is_empty()).then(|| {
            parts
                .iter()
                .map(|(subsystem, why)| format!("{subsystem} source down, restarting: {why}"))
                .collect::<Vec<_>>()
                .join("\n")
        })
    }

    fn parts(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, String>> {
        self.down.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A task that ended, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    pub task: &'static str,
    /// The panic's message, if it panicked.
    pub panic: Option<String>,
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.panic {
            Some(p) => write!(f, "task {} panicked: {p}", self.task),
            None => write!(f, "task {} ended", self.task),
        }
    }
}

/// The running tasks, by name.
#[derive(Default)]
pub struct Tasks {
    set: JoinSet<()>,
    names: HashMap<Id, &'static str>,
    health: Health,
}

impl Tasks {
    pub fn new(health: Health) -> Self {
        Self {
            health,
            ..Self::default()
        }
    }

    /// The health the tasks report to.
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    pub fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        let handle = self.set.spawn(task);
        self.names.insert(handle.id(), name);
    }

    /// Runs `work` on a thread of its own (blocking reads that would hold a
    /// pool thread forever), watched like a task.
    pub fn spawn_thread(
        &mut self,
        name: &'static str,
        work: impl FnOnce() + Send + 'static,
    ) -> std::io::Result<()> {
        let (done, ended) = oneshot::channel();
        std::thread::Builder::new()
            .name(format!("cgscope-{name}"))
            .spawn(move || {
                let outcome = std::panic::catch_unwind(AssertUnwindSafe(work));
                let _ = done.send(outcome.err().map(|p| panic_message(&*p)));
            })?;
        self.spawn(name, async move {
            if let Ok(Some(panic)) = ended.await {
                // Re-raised here so the JoinSet reports it as this task's.
                std::panic::resume_unwind(Box::new(panic));
            }
        });
        Ok(())
    }

    /// Waits for the first task to end (forever while none does), and marks
    /// the agent unhealthy with it.
    pub async fn first_exit(&mut self) -> Exit {
        let Some(joined) = self.set.join_next_with_id().await else {
            return std::future::pending().await;
        };
        let (id, panic) = match joined {
            Ok((id, ())) => (id, None),
            Err(e) => {
                let id = e.id();
                let panic = match e.try_into_panic() {
                    Ok(p) => panic_message(&*p),
                    Err(e) => e.to_string(),
                };
                (id, Some(panic))
            }
        };
        let exit = Exit {
            task: self.names.remove(&id).unwrap_or("unnamed"),
            panic,
        };
        self.health.fail(exit.clone());
        exit
    }
}

/// SIGTERM or SIGINT: the agent stops, with exit code 0.
pub async fn shutdown_signal() {
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %Chain(&e), "cannot listen for SIGTERM");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_task_to_end_is_named_and_fails_health() {
        let health = Health::default();
        let mut tasks = Tasks::new(health.clone());
        tasks.spawn("forever", std::future::pending());
        let (stop, stopped) = oneshot::channel::<()>();
        tasks.spawn("short", async move {
            let _ = stopped.await;
        });
        assert!(health.failed().is_none());
        drop(stop);
        let exit = tasks.first_exit().await;
        assert_eq!(
            exit,
            Exit {
                task: "short",
                panic: None
            }
        );
        assert_eq!(health.failed(), Some(&exit));
        assert_eq!(exit.to_string(), "task short ended");
    }

    #[tokio::test]
    async fn a_panic_is_reported_with_its_message_from_a_task_or_a_thread() {
        let mut tasks = Tasks::new(Health::default());
        tasks.spawn("task", async { panic!("boom {}", 1) });
        let exit = tasks.first_exit().await;
        assert_eq!((exit.task, exit.panic.as_deref()), ("task", Some("boom 1")));

        tasks.spawn_thread("thread", || panic!("bang")).unwrap();
        let exit = tasks.first_exit().await;
        assert_eq!((exit.task, exit.panic.as_deref()), ("thread", Some("bang")));
        assert_eq!(exit.to_string(), "task thread panicked: bang");
    }

    #[test]
    fn a_part_down_fails_health_until_it_is_back() {
        let health = Health::default();
        assert_eq!(health.problem(), None);
        health.down("oom", "the file was removed".into());
        assert!(health.is_down("oom"));
        assert_eq!(
            health.problem().as_deref(),
            Some("oom source down, restarting: the file was removed")
        );
        health.up("oom");
        assert_eq!(health.problem(), None);
    }

    #[tokio::test]
    async fn a_thread_that_returns_has_ended() {
        let mut tasks = Tasks::new(Health::default());
        tasks.spawn_thread("reader", || {}).unwrap();
        let exit = tasks.first_exit().await;
        assert_eq!(exit.to_string(), "task reader ended");
    }
}
