//! A floor on how often a busy trigger reconciles one object. The first trigger passes at
//! once; later ones within the object's floor of the last that passed go as one, when the
//! floor is up. kube's debounce does not fit a steady stream of changes: it delays for as
//! long as they keep coming. The delay and deduplication are kube's scheduler's.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::{Stream, StreamExt};
use kube::runtime::scheduler::{ScheduleRequest, scheduler};
use tokio::time::Instant;

/// `triggers`, each object at most once per `floor(object)`, read as it passes.
pub fn at_most_every<T, S, F>(triggers: S, floor: F) -> impl Stream<Item = T>
where
    T: Clone + Eq + Hash,
    S: Stream<Item = T>,
    F: Fn(&T) -> Duration,
{
    // When each object that passed may pass again.
    let free_at: Arc<Mutex<HashMap<T, Instant>>> = Arc::default();
    let read = free_at.clone();
    let requests = triggers.map(move |message| {
        let now = Instant::now();
        let free = read
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&message)
            .copied();
        let run_at = free.map_or(now, |t| t.max(now));
        ScheduleRequest { message, run_at }
    });
    scheduler(requests).map(move |message| {
        let now = Instant::now();
        let mut free_at = free_at.lock().unwrap_or_else(PoisonError::into_inner);
        // Only the ones still inside their floor matter: the map stays as small as that.
        free_at.retain(|_, t| *t > now);
        free_at.insert(message.clone(), now + floor(&message));
        message
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use futures::channel::mpsc;

    const EVERY: Duration = Duration::from_secs(10);
    const SMALL: Duration = Duration::from_millis(6);

    /// Plans named "small-…" are cheap to pass; the rest are not.
    fn floor(plan: &&str) -> Duration {
        if plan.starts_with("small-") { SMALL } else { EVERY }
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_trigger_passes_at_once_and_a_burst_after_it_once_when_its_floor_is_up() {
        let (tx, rx) = mpsc::unbounded();
        let mut out = Box::pin(at_most_every(rx, floor));
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

    #[tokio::test(start_paused = true)]
    async fn each_object_has_the_floor_of_its_own_cost() {
        let (tx, rx) = mpsc::unbounded();
        let mut out = Box::pin(at_most_every(rx, floor));
        let start = Instant::now();
        tx.unbounded_send("small-a").unwrap();
        tx.unbounded_send("large-b").unwrap();
        let mut passed = [out.next().await, out.next().await];
        passed.sort();
        assert_eq!(passed, [Some("large-b"), Some("small-a")]);
        assert_eq!(start.elapsed(), Duration::ZERO, "both at once, the first time");
        tx.unbounded_send("small-a").unwrap();
        tx.unbounded_send("large-b").unwrap();
        assert_eq!(out.next().await, Some("small-a"));
        assert_eq!(
            start.elapsed(),
            SMALL,
            "a cheap object's burst waits only its own floor"
        );
        assert_eq!(out.next().await, Some("large-b"));
        assert_eq!(start.elapsed(), EVERY);
    }
}
