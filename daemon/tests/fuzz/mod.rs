//! The fuzzing harness (stable Rust, in-process): proptest generates inputs, half of them
//! arbitrary bytes, most of them real files from `../shared/data` (or files the test wrote with
//! the project's own writers) with a few mutations each: bit flips, boundary bytes and words,
//! cuts, removed, repeated and inserted ranges, numbers in text replaced by extreme ones.
//!
//! Every input must come back from the parser (an `Ok` or an error) without a panic, within
//! [`SLOW`] (a watchdog aborts the process with the input saved after [`HANG`]), and without
//! allocating more than [`alloc_bound`] at its peak (counted by this binary's global allocator).
//! A failing input is shrunk by proptest and saved under `<target dir>/tmp/fuzz-failures/`; it then
//! becomes a regression test next to the target.
//!
//! Time per target: `NEUROD_FUZZ_S` (default 2 s in the test command; `bench/faults.sh` runs
//! longer). `NEUROD_FUZZ_SEED` replays a run, `NEUROD_FUZZ_REPLAY=<file>` one saved input, and
//! `NEUROD_FUZZ_TRACE_BYTES=<n>` prints where any allocation over n bytes is made. Each target
//! prints its executions, and appends them to the file `NEUROD_FUZZ_REPORT` names (for the
//! bench script).

// Each test binary uses part of the harness.
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};

/// An input slower than this fails its target.
pub const SLOW: Duration = Duration::from_secs(3);
/// An input still running after this aborts the process (a hang never ends on its own).
pub const HANG: Duration = Duration::from_secs(30);

/// The most one input may make a parser allocate at once: 64 MiB plus 8 bytes per input byte
/// (decoded pixels and samples are at most a few times the bytes that hold them).
pub fn alloc_bound(input_bytes: usize) -> i64 {
    (64 << 20) + 8 * input_bytes as i64
}

// ---- Allocation accounting -------------------------------------------------------------------

/// The system allocator, counting the bytes live on each thread and on the whole process.
pub struct Counting;

thread_local! {
    static THREAD_LIVE: Cell<i64> = const { Cell::new(0) };
    static THREAD_PEAK: Cell<i64> = const { Cell::new(0) };
}
static PROCESS_LIVE: AtomicI64 = AtomicI64::new(0);
static PROCESS_PEAK: AtomicI64 = AtomicI64::new(0);

fn note(delta: i64) {
    // `try_with`: a thread being torn down still frees memory.
    let _ = THREAD_LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = THREAD_PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
    let now = PROCESS_LIVE.fetch_add(delta, Ordering::Relaxed) + delta;
    PROCESS_PEAK.fetch_max(now, Ordering::Relaxed);
}

/// `NEUROD_FUZZ_TRACE_BYTES=N`: print where each single allocation of more than N bytes is made.
fn trace_large(size: usize) {
    static LIMIT: OnceLock<usize> = OnceLock::new();
    thread_local! {
        static TRACING: Cell<bool> = const { Cell::new(false) };
    }
    // Reading the variable and printing allocate: guarded against coming back in here.
    if TRACING.try_with(|t| t.replace(true)).unwrap_or(true) {
        return;
    }
    let limit = *LIMIT.get_or_init(|| crate::common::env_or("NEUROD_FUZZ_TRACE_BYTES", usize::MAX));
    if size > limit {
        eprintln!(
            "allocation of {size} bytes:\n{}",
            std::backtrace::Backtrace::force_capture()
        );
    }
    let _ = TRACING.try_with(|t| t.set(false));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            note(layout.size() as i64);
            if layout.size() > 1 << 20 {
                trace_large(layout.size());
            }
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            note(layout.size() as i64);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        note(-(layout.size() as i64));
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            note(new_size as i64 - layout.size() as i64);
        }
        p
    }
}

/// Where allocations are counted: the calling thread (a parser called in place), the whole
/// process (a server answering on its own threads; its test binary runs that target alone), or
/// another process (a daemon the target talks to), by its peak resident memory, which Linux
/// resets on request (`/proc/<pid>/clear_refs`).
#[derive(Clone, Copy, Debug)]
pub enum Scope {
    Thread,
    Process,
    Daemon(u32),
}

/// A `/proc/<pid>/status` field in kB, as bytes.
fn status_bytes(pid: u32, field: &str) -> i64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with(field))?.to_string();
            line.split_whitespace().nth(1)?.parse::<i64>().ok()
        })
        .map_or(0, |kb| kb * 1024)
}

impl Scope {
    fn start(self) -> i64 {
        match self {
            Scope::Thread => {
                let live = THREAD_LIVE.with(Cell::get);
                THREAD_PEAK.with(|p| p.set(live));
                live
            }
            Scope::Process => {
                let live = PROCESS_LIVE.load(Ordering::Relaxed);
                PROCESS_PEAK.store(live, Ordering::Relaxed);
                live
            }
            Scope::Daemon(pid) => {
                let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
                status_bytes(pid, "VmRSS:")
            }
        }
    }
    fn peak(self) -> i64 {
        match self {
            Scope::Thread => THREAD_PEAK.with(Cell::get),
            Scope::Process => PROCESS_PEAK.load(Ordering::Relaxed),
            Scope::Daemon(pid) => status_bytes(pid, "VmHWM:"),
        }
    }
}

// ---- Inputs ----------------------------------------------------------------------------------

/// One mutation; positions are taken modulo the input's length when applied.
#[derive(Debug, Clone)]
enum Op {
    Flip { at: u32, bit: u8 },
    Byte { at: u32, value: u8 },
    Word { at: u32, value: u32 },
    Cut { at: u32 },
    Remove { at: u32, len: u16 },
    Repeat { at: u32, len: u16, times: u8 },
    Insert { at: u32, bytes: Vec<u8> },
    Number { at: u32, which: u8 },
}

const BYTES: [u8; 8] = [0, 1, 0x7f, 0x80, 0xff, b'\n', b'=', b'"'];
const WORDS: [u32; 6] = [0, 1, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff, 1 << 24];
const NUMBERS: [&str; 11] = [
    "0",
    "-1",
    "65536",
    "4294967297",
    "18446744073709551617",
    "999999999999999999999999",
    "1e309",
    "NaN",
    "-0.0",
    "inf",
    "",
];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (any::<u32>(), 0u8..8).prop_map(|(at, bit)| Op::Flip { at, bit }),
        (any::<u32>(), 0..BYTES.len()).prop_map(|(at, i)| Op::Byte {
            at,
            value: BYTES[i]
        }),
        (any::<u32>(), 0..WORDS.len()).prop_map(|(at, i)| Op::Word {
            at,
            value: WORDS[i]
        }),
        any::<u32>().prop_map(|at| Op::Cut { at }),
        (any::<u32>(), 1u16..512).prop_map(|(at, len)| Op::Remove { at, len }),
        (any::<u32>(), 1u16..64, 1u8..16).prop_map(|(at, len, times)| Op::Repeat {
            at,
            len,
            times
        }),
        (any::<u32>(), vec(any::<u8>(), 1..16)).prop_map(|(at, bytes)| Op::Insert { at, bytes }),
        (any::<u32>(), 0..NUMBERS.len() as u8).prop_map(|(at, which)| Op::Number { at, which }),
    ]
}

fn apply(input: &mut Vec<u8>, op: &Op) {
    let pos = |at: u32, len: usize| at as usize % (len + 1);
    let n = input.len();
    match op {
        Op::Flip { at, bit } if n > 0 => input[*at as usize % n] ^= 1 << bit,
        Op::Byte { at, value } if n > 0 => input[*at as usize % n] = *value,
        Op::Word { at, value } if n >= 4 => {
            let i = *at as usize % (n - 3);
            input[i..i + 4].copy_from_slice(&value.to_le_bytes());
        }
        Op::Cut { at } => input.truncate(pos(*at, n)),
        Op::Remove { at, len } => {
            let i = pos(*at, n);
            input.drain(i..(i + *len as usize).min(n));
        }
        Op::Repeat { at, len, times } => {
            let i = pos(*at, n);
            let part = input[i..(i + *len as usize).min(n)].to_vec();
            for _ in 0..*times {
                input.splice(i..i, part.iter().copied());
            }
        }
        Op::Insert { at, bytes } => {
            let i = pos(*at, n);
            input.splice(i..i, bytes.iter().copied());
        }
        Op::Number { at, which } => {
            // The next run of digits at or after the position, replaced by an extreme number.
            let Some(start) = (pos(*at, n)..n).find(|&i| input[i].is_ascii_digit()) else {
                return;
            };
            let end = (start..n)
                .find(|&i| !input[i].is_ascii_digit())
                .unwrap_or(n);
            input.splice(start..end, NUMBERS[*which as usize].bytes());
        }
        _ => {}
    }
}

/// Arbitrary bytes (one input in four), else a seed with 1 to 8 mutations.
fn inputs(seeds: Arc<Vec<Vec<u8>>>) -> BoxedStrategy<Vec<u8>> {
    let arbitrary = vec(any::<u8>(), 0..4096);
    if seeds.is_empty() {
        return arbitrary.boxed();
    }
    let mutated = (0..seeds.len(), vec(op(), 1..8)).prop_map(move |(i, ops)| {
        let mut input = seeds[i].clone();
        for op in &ops {
            apply(&mut input, op);
        }
        input
    });
    prop_oneof![1 => arbitrary, 3 => mutated].boxed()
}

// ---- Running ---------------------------------------------------------------------------------

/// The input running now, for the watchdog.
struct Running {
    target: String,
    since: Instant,
    input: Vec<u8>,
}

static RUNNING: Mutex<Option<Running>> = Mutex::new(None);

fn failures_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures");
    let _ = std::fs::create_dir_all(&dir);
    dir
}

fn save_failure(target: &str, input: &[u8]) -> PathBuf {
    let path = failures_dir().join(format!("{target}.bin"));
    let _ = std::fs::write(&path, input);
    path
}

/// Aborts the process, with the input saved, if one input runs past [`HANG`].
fn start_watchdog() {
    count_panics();
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        std::thread::spawn(|| loop {
            std::thread::sleep(Duration::from_millis(200));
            let running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(r) = running.as_ref().filter(|r| r.since.elapsed() > HANG) {
                let path = save_failure(&r.target, &r.input);
                eprintln!(
                    "fuzz {}: an input ran for more than {HANG:?} (a hang); saved to {}",
                    r.target,
                    path.display()
                );
                std::process::abort();
            }
        });
    });
}

fn seconds() -> f64 {
    crate::common::env_or("NEUROD_FUZZ_S", 2.0)
}

/// Runs one input; returns its allocation peak, or why it fails: a panic, [`SLOW`], or more
/// than `bound(input.len())` bytes allocated at once.
fn run_one(
    target: &str,
    input: &[u8],
    scope: Scope,
    bound: &impl Fn(usize) -> i64,
    run: &impl Fn(&[u8]),
) -> Result<i64, String> {
    *RUNNING.lock().unwrap_or_else(|e| e.into_inner()) = Some(Running {
        target: target.into(),
        since: Instant::now(),
        input: input.to_vec(),
    });
    let started = Instant::now();
    uncontained_panics();
    let base = scope.start();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(input)));
    let used = scope.peak() - base;
    let took = started.elapsed();
    *RUNNING.lock().unwrap_or_else(|e| e.into_inner()) = None;
    if let Err(payload) = outcome {
        let what = pipelines::fault::panic_message(payload.as_ref());
        return Err(format!("panicked: {what}"));
    }
    if let Some(what) = uncontained_panics().pop() {
        return Err(format!("a thread panicked: {what}"));
    }
    if took > SLOW {
        return Err(format!("took {took:?}"));
    }
    let bound = bound(input.len());
    if used > bound {
        return Err(format!(
            "allocated {used} bytes at its peak (bound {bound})"
        ));
    }
    Ok(used)
}

/// The checks of [`fuzz`] on one input: the regression test of an input fuzzing found.
pub fn replay(
    target: &str,
    input: &[u8],
    scope: Scope,
    bound: impl Fn(usize) -> i64,
    run: impl Fn(&[u8]),
) {
    start_watchdog();
    if let Err(why) = run_one(target, input, scope, &bound, &run) {
        panic!("{target}: {why}");
    }
}

/// What a target's run did.
#[derive(Debug)]
pub struct Report {
    pub executions: u64,
    /// The largest allocation peak of one input, bytes.
    pub peak_alloc: i64,
}

/// Feeds `run` with inputs for `NEUROD_FUZZ_S` seconds (every seed as it is first); panics
/// with the shrunk input saved if one panics, is slow, or allocates more than `bound` (of the
/// input's length; usually [`alloc_bound`] of all the bytes the target reads).
pub fn fuzz(
    target: &str,
    seeds: Vec<Vec<u8>>,
    scope: Scope,
    bound: impl Fn(usize) -> i64,
    run: impl Fn(&[u8]),
) -> Report {
    start_watchdog();
    let seed = crate::common::seed_from_env("NEUROD_FUZZ_SEED");
    let executions = Cell::new(0u64);
    let peak_alloc = Cell::new(0i64);
    let check = |input: &[u8]| -> Result<(), TestCaseError> {
        executions.set(executions.get() + 1);
        let used = run_one(target, input, scope, &bound, &run).map_err(TestCaseError::fail)?;
        peak_alloc.set(peak_alloc.get().max(used));
        Ok(())
    };
    let fail = |why: String, input: &[u8]| -> ! {
        let path = save_failure(target, input);
        panic!(
            "fuzz {target} (NEUROD_FUZZ_SEED={seed}): {why}; the input ({} bytes) is saved to {}",
            input.len(),
            path.display()
        );
    };
    if let Some(path) = std::env::var_os("NEUROD_FUZZ_REPLAY") {
        // One saved input (from `fuzz-failures/`), for a closer look.
        let input = std::fs::read(&path).unwrap();
        if let Err(e) = check(&input) {
            panic!("fuzz {target}: the replayed input fails: {e}");
        }
        return Report {
            executions: 1,
            peak_alloc: peak_alloc.get(),
        };
    }
    for s in &seeds {
        if let Err(e) = check(s) {
            fail(format!("a seed fails: {e}"), s);
        }
    }
    let config = Config {
        cases: 32,
        failure_persistence: None,
        max_shrink_time: 60_000,
        ..Config::default()
    };
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    // A runner runs its `cases` once; each round gets a new one, its RNG forked from this one.
    let mut rounds = TestRunner::new_with_rng(
        config.clone(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &bytes),
    );
    let strategy = inputs(Arc::new(seeds));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds());
    // Panics inside a target are caught and reported by `check`; keep their reports quiet.
    let quiet = QuietPanics::new();
    while Instant::now() < deadline {
        let mut runner = TestRunner::new_with_rng(config.clone(), rounds.new_rng());
        match runner.run(&strategy, |input| check(&input)) {
            Ok(()) => {}
            Err(TestError::Fail(why, input)) => {
                drop(quiet);
                fail(why.to_string(), &input)
            }
            Err(TestError::Abort(why)) => panic!("fuzz {target}: proptest aborted: {why}"),
        }
    }
    drop(quiet);
    let report = Report {
        executions: executions.get(),
        peak_alloc: peak_alloc.get(),
    };
    let contained = CONTAINED_COUNT.swap(0, Ordering::Relaxed);
    let line = format!(
        "fuzz {target}: {} executions in {:.0} s, largest allocation of one input {:.1} MiB, \
         {contained} panics contained by the code's own guard, seed {seed}",
        report.executions,
        seconds(),
        report.peak_alloc as f64 / (1 << 20) as f64
    );
    eprintln!("{line}");
    if let Some(path) = std::env::var_os("NEUROD_FUZZ_REPORT") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
    report
}

/// Panics anywhere in the process since the last look (a server thread may catch its own and
/// go on, but a panic is still a bug the input found), as Rust reports them.
static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Panics raised inside these source paths are ones the code catches on purpose (see
/// [`contained_panics_from`]); they are counted, not failed.
static CONTAINED: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
static CONTAINED_COUNT: AtomicU64 = AtomicU64::new(0);

/// Panics whose location contains one of `paths` are contained by the code under test itself
/// (the `arrow_ipc` source runs arrow's decoder under `catch_unwind`, since arrow-ipc panics on
/// some malformed messages): they are counted in the report instead of failing the input.
pub fn contained_panics_from(paths: &[&'static str]) {
    *CONTAINED.lock().unwrap_or_else(|e| e.into_inner()) = paths.to_vec();
}

/// Counts panics that another process (a daemon under test) contained, for the report.
pub fn count_contained(n: u64) {
    CONTAINED_COUNT.fetch_add(n, Ordering::Relaxed);
}

/// The panics since the last call that were not contained.
fn uncontained_panics() -> Vec<String> {
    let seen = std::mem::take(&mut *PANICS.lock().unwrap_or_else(|e| e.into_inner()));
    let contained = CONTAINED.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let (ok, bad): (Vec<_>, Vec<_>) = seen
        .into_iter()
        .partition(|p| contained.iter().any(|c| p.contains(c)));
    CONTAINED_COUNT.fetch_add(ok.len() as u64, Ordering::Relaxed);
    bad
}

thread_local! {
    /// Whether this thread's panics go unprinted (the harness reports the shrunk one itself).
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

fn count_panics() {
    static HOOK: OnceLock<()> = OnceLock::new();
    HOOK.get_or_init(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let what = info.to_string();
            let contained = {
                let c = CONTAINED.lock().unwrap_or_else(|e| e.into_inner());
                c.iter().any(|c| what.contains(c))
            };
            PANICS.lock().unwrap_or_else(|e| e.into_inner()).push(what);
            if !contained && !QUIET.with(Cell::get) {
                default(info);
            }
        }));
    });
}

/// While alive, panics on this thread print nothing.
struct QuietPanics;

impl QuietPanics {
    fn new() -> Self {
        QUIET.with(|q| q.set(true));
        QuietPanics
    }
}

impl Drop for QuietPanics {
    fn drop(&mut self) {
        QUIET.with(|q| q.set(false));
    }
}
