//! The follow-a-growing-file loop shared by the file sources (`spikeglx`, `openephys`, `tiff`):
//! look for new data every `poll`, emit it as soon as it is whole, and stop on shutdown, when
//! every consumer has stopped, when the acquisition says it has finished, or after
//! `idle_timeout` without new data. What "whole" means and how to read it (samples of a raw
//! file, pages of a TIFF stack) is the source's [`Followed`] part.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::component::{ComponentError, Shutdown};

/// Re-ask the acquisition whether it stopped at most this often: re-reading a `.meta` or
/// re-opening an oebin on every 5 ms poll would be wasted work.
pub const FINISH_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// How often to look for new data, and when to give up on a file that stopped growing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    pub poll: Duration,
    /// `None`: never.
    pub idle_timeout: Option<Duration>,
}

impl Timing {
    /// From the `poll_ms` and `idle_timeout_s` options; out-of-range values (refused by
    /// [`option_problems`]) fall back to a 5 ms poll and no idle timeout.
    pub fn from_options(poll_ms: f64, idle_timeout_s: f64) -> Timing {
        Timing {
            poll: Duration::try_from_secs_f64(poll_ms / 1000.0).unwrap_or(Duration::from_millis(5)),
            idle_timeout: (idle_timeout_s > 0.0)
                .then(|| Duration::try_from_secs_f64(idle_timeout_s).ok())
                .flatten(),
        }
    }
}

/// Every out-of-range follow option, one message each (the caller prefixes the component).
pub fn option_problems(poll_ms: f64, idle_timeout_s: f64) -> Vec<String> {
    let mut out = Vec::new();
    if !(poll_ms.is_finite() && poll_ms > 0.0 && poll_ms <= 10_000.0) {
        out.push(format!(
            "`poll_ms` = {poll_ms} must be above 0 and at most 10000"
        ));
    }
    if let Err(why) = crate::limits::seconds(idle_timeout_s) {
        out.push(format!(
            "`idle_timeout_s` = {idle_timeout_s} {why} (0 = never)"
        ));
    }
    out
}

/// The acquisition has stopped writing the followed file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finished {
    /// Final size of the file in bytes, when the acquisition says (SpikeGLX `fileSizeBytes`).
    pub expected_bytes: Option<u64>,
}

/// Tells a follower when the acquisition has stopped. Called only while the file is not growing.
pub trait FinishWatcher: Send {
    /// `Some` once the acquisition has stopped; `None` while it still records (or cannot tell
    /// yet, e.g. a metadata file caught half-rewritten).
    fn check(&mut self) -> Option<Finished>;
}

impl<F: FnMut() -> Option<Finished> + Send> FinishWatcher for F {
    fn check(&mut self) -> Option<Finished> {
        self()
    }
}

/// What one look at the file found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing new.
    Nothing,
    /// New data was emitted; look again after the poll interval.
    Grew,
    /// New data was emitted and more may be ready at once (e.g. the next file of a folder):
    /// look again without sleeping.
    GrewMore,
    /// Stop following: every consumer has stopped, or the file cannot be followed any more
    /// (the source has counted why).
    Stop,
}

/// The format-specific part of a follower.
pub trait Followed {
    /// Reads and emits every whole unit the file holds now.
    fn step(&mut self) -> Result<Step, ComponentError>;

    /// Whether the acquisition has finished the file. Asked only after a step found nothing
    /// new, at most every [`FINISH_CHECK_INTERVAL`]. By default a follower never hears it.
    fn finished(&mut self) -> Option<Finished> {
        None
    }
}

/// Why [`follow`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The acquisition said it stopped (the source reads what is left).
    Finished(Finished),
    /// Nothing new for this long.
    Idle(Duration),
    Shutdown,
    /// [`Step::Stop`].
    Stopped,
}

impl End {
    /// For the log line that ends a follow.
    pub fn describe(&self) -> String {
        match self {
            End::Finished(_) => "the acquisition stopped".to_string(),
            End::Idle(d) => format!("nothing new for {} s", d.as_secs_f64()),
            End::Shutdown => "shutdown".to_string(),
            End::Stopped => "every consumer stopped".to_string(),
        }
    }
}

/// Steps `target` every `timing.poll` until one of the [`End`]s. Sleeps wake at once on
/// shutdown. Only the target's own errors are `Err`.
pub fn follow(
    target: &mut impl Followed,
    timing: Timing,
    shutdown: &Shutdown,
) -> Result<End, ComponentError> {
    let mut last_new = Instant::now();
    let mut last_check: Option<Instant> = None;
    loop {
        if shutdown.is_triggered() {
            return Ok(End::Shutdown);
        }
        match target.step()? {
            Step::Stop => return Ok(End::Stopped),
            Step::GrewMore => {
                last_new = Instant::now();
                continue;
            }
            Step::Grew => last_new = Instant::now(),
            Step::Nothing => {
                if last_check.is_none_or(|t| t.elapsed() >= FINISH_CHECK_INTERVAL) {
                    last_check = Some(Instant::now());
                    if let Some(f) = target.finished() {
                        return Ok(End::Finished(f));
                    }
                }
                if let Some(idle) = timing.idle_timeout {
                    if last_new.elapsed() >= idle {
                        return Ok(End::Idle(idle));
                    }
                }
            }
        }
        if shutdown.sleep(timing.poll) {
            return Ok(End::Shutdown);
        }
    }
}

/// When the file was first seen to reach each length, to estimate the age of emitted data
/// (the follower's lag).
#[derive(Default)]
pub struct GrowthLog {
    seen: VecDeque<(u64, Instant)>,
}

impl GrowthLog {
    pub fn observe(&mut self, len: u64, now: Instant) {
        if self.seen.back().is_none_or(|&(l, _)| len > l) {
            self.seen.push_back((len, now));
        }
    }

    /// Seconds since the file first held byte `end - 1` (the newest byte emitted).
    pub fn age_of(&mut self, end: u64) -> f64 {
        while self.seen.front().is_some_and(|&(l, _)| l < end) {
            self.seen.pop_front();
        }
        self.seen
            .front()
            .map(|&(_, t)| t.elapsed().as_secs_f64())
            .unwrap_or(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A scripted file: each step returns the next scripted result (then `Nothing` forever);
    /// the acquisition finishes once `finish_after` finish checks were made.
    struct Script {
        steps: Vec<Step>,
        stepped: usize,
        checks: usize,
        finish_after: Option<usize>,
    }

    impl Script {
        fn new(steps: &[Step], finish_after: Option<usize>) -> Self {
            Script {
                steps: steps.to_vec(),
                stepped: 0,
                checks: 0,
                finish_after,
            }
        }
    }

    impl Followed for Script {
        fn step(&mut self) -> Result<Step, ComponentError> {
            let s = self
                .steps
                .get(self.stepped)
                .copied()
                .unwrap_or(Step::Nothing);
            self.stepped += 1;
            Ok(s)
        }
        fn finished(&mut self) -> Option<Finished> {
            self.checks += 1;
            self.finish_after
                .is_some_and(|n| self.checks >= n)
                .then_some(Finished {
                    expected_bytes: Some(self.checks as u64),
                })
        }
    }

    fn timing(poll_ms: u64, idle_ms: Option<u64>) -> Timing {
        Timing {
            poll: Duration::from_millis(poll_ms),
            idle_timeout: idle_ms.map(Duration::from_millis),
        }
    }

    #[test]
    fn idle_timeout_counts_from_the_last_growth() {
        let mut s = Script::new(&[Step::Grew, Step::Nothing, Step::Grew], None);
        let t = Instant::now();
        let end = follow(&mut s, timing(5, Some(300)), &Shutdown::new()).unwrap();
        assert_eq!(end, End::Idle(Duration::from_millis(300)));
        assert!(
            t.elapsed() >= Duration::from_millis(300),
            "{:?}",
            t.elapsed()
        );
        assert!(s.stepped > 3, "kept polling after the last growth");
        assert!(s.checks >= 1, "asked the acquisition while idle");
    }

    #[test]
    fn finish_is_asked_only_while_idle_and_at_most_every_interval() {
        // Three growths first: no finish check may happen during them.
        let mut s = Script::new(&[Step::Grew, Step::GrewMore, Step::Grew], Some(3));
        let t = Instant::now();
        let end = follow(&mut s, timing(1, None), &Shutdown::new()).unwrap();
        assert_eq!(
            end,
            End::Finished(Finished {
                expected_bytes: Some(3)
            })
        );
        assert_eq!(s.checks, 3);
        // The third check comes at least two intervals after the first.
        assert!(
            t.elapsed() >= 2 * FINISH_CHECK_INTERVAL,
            "{:?}",
            t.elapsed()
        );
        assert!(s.stepped > s.checks, "polls between checks do not ask");
    }

    #[test]
    fn first_quiet_step_asks_at_once() {
        let mut s = Script::new(&[], Some(1));
        let end = follow(&mut s, timing(10_000, None), &Shutdown::new()).unwrap();
        assert!(matches!(end, End::Finished(_)));
        assert_eq!((s.stepped, s.checks), (1, 1));
    }

    #[test]
    fn stop_ends_at_once_without_asking() {
        let mut s = Script::new(&[Step::Grew, Step::Stop], Some(1));
        let end = follow(&mut s, timing(1, Some(10_000)), &Shutdown::new()).unwrap();
        assert_eq!(end, End::Stopped);
        assert_eq!((s.stepped, s.checks), (2, 0));
    }

    #[test]
    fn shutdown_wakes_a_long_poll() {
        struct Counting(Arc<AtomicUsize>);
        impl Followed for Counting {
            fn step(&mut self) -> Result<Step, ComponentError> {
                self.0.fetch_add(1, Ordering::SeqCst);
                Ok(Step::Grew)
            }
        }
        let shutdown = Shutdown::new();
        let steps = Arc::new(AtomicUsize::new(0));
        let trigger = {
            let s = shutdown.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                s.trigger();
                Instant::now()
            })
        };
        let mut c = Counting(steps.clone());
        let end = follow(&mut c, timing(60_000, None), &shutdown).unwrap();
        let triggered_at = trigger.join().unwrap();
        assert_eq!(end, End::Shutdown);
        assert!(
            triggered_at.elapsed() < Duration::from_secs(10),
            "took {:?} after shutdown",
            triggered_at.elapsed()
        );
        assert_eq!(
            steps.load(Ordering::SeqCst),
            1,
            "one step, then the poll sleep"
        );
        // Already triggered: no step at all.
        let mut c = Counting(Arc::new(AtomicUsize::new(0)));
        assert_eq!(
            follow(&mut c, timing(1, None), &shutdown).unwrap(),
            End::Shutdown
        );
        assert_eq!(c.0.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn step_errors_are_returned() {
        struct Failing;
        impl Followed for Failing {
            fn step(&mut self) -> Result<Step, ComponentError> {
                Err(ComponentError::Other("x.bin: cannot read".into()))
            }
        }
        let e = follow(&mut Failing, timing(1, None), &Shutdown::new()).unwrap_err();
        assert!(e.to_string().contains("x.bin"), "{e}");
    }

    #[test]
    fn options_are_checked_and_converted() {
        assert!(option_problems(5.0, 0.0).is_empty());
        assert_eq!(option_problems(0.0, -1.0).len(), 2);
        assert_eq!(option_problems(f64::NAN, 1e30).len(), 2);
        assert_eq!(option_problems(20_000.0, 1.0).len(), 1);
        assert_eq!(
            Timing::from_options(20.0, 0.0),
            timing(20, None),
            "0 = never"
        );
        assert_eq!(Timing::from_options(5.0, 2.5), timing(5, Some(2500)));
    }

    #[test]
    fn growth_log_ages_the_newest_emitted_byte() {
        let mut g = GrowthLog::default();
        let t0 = Instant::now() - Duration::from_secs(2);
        g.observe(100, t0);
        g.observe(100, Instant::now()); // no growth: ignored
        g.observe(200, Instant::now());
        let age = g.age_of(80);
        assert!((1.9..3.0).contains(&age), "{age}");
        assert!(g.age_of(150) < 0.5);
    }
}
