//! The tasks migrations spawn (a caller's migration, hand-offs retried in the background, the
//! target's watcher and settlers, a process forked ahead, a VIP's release): each belongs to one
//! [`Tasks`], which the daemon owns and stops, so none is spawned and forgotten.
//!
//! Stopping cancels what is still running; that is the same as a crash for it, which the
//! journal already makes safe (the next start resolves what was undecided). The daemon first
//! lets migrations in flight reach their decision.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// An owner for migration tasks: cancelled and waited for together.
#[derive(Debug, Clone, Default)]
pub struct Tasks {
    tracker: TaskTracker,
    cancel: CancellationToken,
}

impl Tasks {
    /// A new, empty set, cancelled with `cancel` (a child of the daemon's token).
    pub fn new(cancel: CancellationToken) -> Tasks {
        Tasks {
            tracker: TaskTracker::new(),
            cancel,
        }
    }

    /// Runs `fut` as a task of this set; its output is `None` when the set was stopped first.
    pub(crate) fn spawn<T, F>(&self, fut: F) -> JoinHandle<Option<T>>
    where
        T: Send + 'static,
        F: Future<Output = T> + Send + 'static,
    {
        let cancel = self.cancel.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                biased;
                () = cancel.cancelled() => None,
                out = fut => Some(out),
            }
        })
    }

    /// Cancels every task and waits up to `deadline` for them to end; `false` when some did
    /// not end in time (they are left to the runtime's end).
    pub async fn shutdown(&self, deadline: Duration) -> bool {
        self.cancel.cancel();
        self.tracker.close();
        tokio::time::timeout(deadline, self.tracker.wait())
            .await
            .is_ok()
    }

    /// Tasks still running.
    pub fn len(&self) -> usize {
        self.tracker.len()
    }

    /// Whether none is running.
    pub fn is_empty(&self) -> bool {
        self.tracker.is_empty()
    }
}

/// Removes a directory tree off the async runtime (a service's state can be large); an error
/// is returned, not logged.
pub(crate) async fn remove_tree(path: std::path::PathBuf) -> std::io::Result<()> {
    tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    })
    .await
    .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shutdown_cancels_and_waits_for_every_task() {
        let tasks = Tasks::new(CancellationToken::new());
        let forever = tasks.spawn(std::future::pending::<()>());
        let quick = tasks.spawn(async { 7 });
        assert_eq!(quick.await.unwrap(), Some(7));
        assert_eq!(tasks.len(), 1);
        assert!(tasks.shutdown(Duration::from_secs(5)).await);
        assert_eq!(forever.await.unwrap(), None, "cancelled, not finished");
        assert!(tasks.is_empty());
    }
}
