//! The signals that stop a long-running process (the daemon, the tracker): SIGTERM and SIGINT.

use std::future::Future;

use tokio::signal::unix::{signal, Signal, SignalKind};

/// Resolves at the first SIGTERM or SIGINT. The handlers are installed when this is called
/// (within a Tokio runtime: `Runtime::enter` before `block_on`), not when the future is first
/// polled: a signal sent right after the process told systemd it was ready (a service stopped
/// at once, a test) would otherwise end it by the default action, without its clean shutdown.
/// A handler that cannot be installed never fires.
pub fn shutdown() -> impl Future<Output = ()> {
    let (mut term, mut int) =
        (signal(SignalKind::terminate()).ok(), signal(SignalKind::interrupt()).ok());
    async move {
        tokio::select! {
            () = caught(term.as_mut()) => {}
            () = caught(int.as_mut()) => {}
        }
    }
}

/// The next delivery of a signal whose handler is installed; never, without one.
async fn caught(s: Option<&mut Signal>) {
    match s {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    /// Installed at the call: a SIGINT raised before the future is polled still ends it.
    #[tokio::test]
    async fn a_signal_before_the_first_poll_is_caught() {
        let stop = super::shutdown();
        let pid = std::process::id().to_string();
        let sent = std::process::Command::new("kill").args(["-INT", &pid]).status().unwrap();
        assert!(sent.success());
        tokio::time::timeout(std::time::Duration::from_secs(10), stop).await.unwrap();
    }
}
