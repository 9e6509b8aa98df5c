//! Every long-lived task of the process, in one place: whichever ends first
//! (returns, fails or panics) is reported with its name, so that the
//! composition root can stop the rest and exit non-zero instead of running on
//! degraded.

use std::collections::HashMap;
use std::future::Future;

use tokio::task::{AbortHandle, Id, JoinSet};

/// How a supervised task ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    /// It returned `Ok`.
    Finished,
    /// It returned an error, described.
    Failed(String),
    /// It panicked, or was aborted.
    Died(String),
}

/// A task that ended, by name.
#[derive(Debug, PartialEq, Eq)]
pub struct Ended {
    pub task: &'static str,
    pub ending: Ending,
}

/// The supervised tasks.
#[derive(Default)]
pub struct Supervisor {
    tasks: JoinSet<Result<(), String>>,
    names: HashMap<Id, &'static str>,
    handles: HashMap<&'static str, AbortHandle>,
}

impl Supervisor {
    /// Runs `task` under the name `name`.
    pub fn spawn<F, E>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        let handle = self
            .tasks
            .spawn(async move { task.await.map_err(|e| e.to_string()) });
        self.names.insert(handle.id(), name);
        self.handles.insert(name, handle);
    }

    /// Aborts the task `name`; whether it was running. (Shutdown, and tests
    /// that kill one task to see the process go.)
    pub fn abort(&self, name: &str) -> bool {
        match self.handles.get(name) {
            Some(handle) if !handle.is_finished() => {
                handle.abort();
                true
            }
            _ => false,
        }
    }

    /// Waits for the next task to end; `None` when none is left.
    pub async fn next(&mut self) -> Option<Ended> {
        let joined = self.tasks.join_next_with_id().await?;
        let (id, ending) = match joined {
            Ok((id, Ok(()))) => (id, Ending::Finished),
            Ok((id, Err(error))) => (id, Ending::Failed(error)),
            Err(error) => (error.id(), Ending::Died(error.to_string())),
        };
        let task = self.names.remove(&id).unwrap_or("unnamed");
        self.handles.remove(task);
        Some(Ended { task, ending })
    }

    /// Aborts every task and waits until all have ended.
    pub async fn shutdown(&mut self) {
        self.tasks.shutdown().await;
        self.names.clear();
        self.handles.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_task_to_end_is_named_with_how_it_ended() {
        let mut tasks = Supervisor::default();
        tasks.spawn("forever", std::future::pending::<Result<(), String>>());
        tasks.spawn("failing", async { Err::<(), _>("broken pipe") });
        assert_eq!(
            tasks.next().await,
            Some(Ended {
                task: "failing",
                ending: Ending::Failed("broken pipe".into())
            })
        );
        assert!(tasks.abort("forever"));
        let ended = tasks.next().await.unwrap();
        assert_eq!(ended.task, "forever");
        assert!(matches!(ended.ending, Ending::Died(_)), "{ended:?}");
        assert_eq!(tasks.next().await, None);
    }

    #[tokio::test]
    async fn a_panic_is_reported_not_swallowed() {
        let mut tasks = Supervisor::default();
        tasks.spawn("panicking", async {
            if true {
                panic!("boom");
            }
            Ok::<(), String>(())
        });
        let ended = tasks.next().await.unwrap();
        assert_eq!(ended.task, "panicking");
        assert!(
            matches!(&ended.ending, Ending::Died(why) if why.contains("panic")),
            "{ended:?}"
        );
    }
}
