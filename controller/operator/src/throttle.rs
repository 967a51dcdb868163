//! A floor on how often a busy trigger reconciles one object. The first trigger passes at
//! once; later ones within `every` of the last that passed go as one, when `every` is up.
//! kube's debounce does not fit a steady stream of changes: it delays for as long as they
//! keep coming. The delay and deduplication are kube's scheduler's.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::{Stream, StreamExt};
use kube::runtime::scheduler::{ScheduleRequest, scheduler};
use tokio::time::Instant;

/// `triggers`, each object at most once per `every`.
pub fn at_most_every<T, S>(triggers: S, every: Duration) -> impl Stream<Item = T>
where
    T: Clone + Eq + Hash,
    S: Stream<Item = T>,
{
    let passed: Arc<Mutex<HashMap<T, Instant>>> = Arc::default();
    let read = passed.clone();
    let requests = triggers.map(move |message| {
        let now = Instant::now();
        let last = read
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&message)
            .copied();
        let run_at = last.map_or(now, |t| (t + every).max(now));
        ScheduleRequest { message, run_at }
    });
    scheduler(requests).map(move |message| {
        let now = Instant::now();
        let mut passed = passed.lock().unwrap_or_else(PoisonError::into_inner);
        // Only the ones still inside their floor matter: the map stays as small as that.
        passed.retain(|_, t| *t + every > now);
        passed.insert(message.clone(), now);
        message
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use futures::channel::mpsc;

    const EVERY: Duration = Duration::from_secs(10);

    #[tokio::test(start_paused = true)]
    async fn the_first_trigger_passes_at_once_and_a_burst_after_it_once_when_its_floor_is_up() {
        let (tx, rx) = mpsc::unbounded();
        let mut out = Box::pin(at_most_every(rx, EVERY));
        let start = Instant::now();
        tx.unbounded_send("plan-a").unwrap();
        assert_eq!(out.next().await, Some("plan-a"));
        assert_eq!(start.elapsed(), Duration::ZERO, "the first passes at once");

        for _ in 0..5 {
            tokio::time::advance(Duration::from_secs(1)).await;
            tx.unbounded_send("plan-a").unwrap();
        }
        tx.unbounded_send("plan-b").unwrap();
        assert_eq!(out.next().await, Some("plan-b"), "another object has its own floor");
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        assert_eq!(out.next().await, Some("plan-a"), "the burst goes as one");
        assert_eq!(start.elapsed(), EVERY, "when the floor after the first is up");
        assert!(out.next().now_or_never().is_none(), "and only once");

        tokio::time::advance(EVERY * 3).await;
        tx.unbounded_send("plan-a").unwrap();
        let quiet_then = Instant::now();
        assert_eq!(out.next().await, Some("plan-a"));
        assert_eq!(
            quiet_then.elapsed(),
            Duration::ZERO,
            "after a quiet spell, at once again"
        );
    }
}
