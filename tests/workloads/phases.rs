// A CPU-bound Rust workload that measures its own ground truth, built the way Rust
// release builds are: without frame pointers.
//
// Usage: phases-rs THREADS SECONDS TRUTH_FILE
//
// Each thread alternates between hot_phase() (about three quarters of its work) and
// cold_phase(), and measures the thread CPU time of each. At the end it writes to
// TRUTH_FILE, as JSON: the CPU time of each phase summed over threads, and the whole
// process's CPU time.

use std::{
    hint::black_box,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::Duration,
};

#[repr(C)]
struct Timespec {
    seconds: i64,
    nanoseconds: i64,
}

unsafe extern "C" {
    fn clock_gettime(clock: i32, time: *mut Timespec) -> i32;
}

const CLOCK_PROCESS_CPUTIME_ID: i32 = 2;
const CLOCK_THREAD_CPUTIME_ID: i32 = 3;

fn cpu_ns(clock: i32) -> u64 {
    let mut time = Timespec {
        seconds: 0,
        nanoseconds: 0,
    };
    // SAFETY: clock_gettime fills the struct it is given.
    unsafe { clock_gettime(clock, &mut time) };
    time.seconds as u64 * 1_000_000_000 + time.nanoseconds as u64
}

static STOP: AtomicBool = AtomicBool::new(false);

#[inline(never)]
fn spin(iterations: u64, seed: u64) -> u64 {
    let mut x = seed;
    for _ in 0..iterations {
        x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407));
    }
    x
}

/// A frame of its own that keeps a buffer live across the call, so that the compiler
/// gives it a frame without a frame pointer.
#[inline(never)]
fn hot_phase(seed: u64) -> u64 {
    let buffer = black_box([seed; 32]);
    spin(3_000_000, buffer[7]) ^ black_box(buffer)[3]
}

#[inline(never)]
fn cold_phase(seed: u64) -> u64 {
    let buffer = black_box([seed; 32]);
    spin(1_000_000, buffer[5]) ^ black_box(buffer)[2]
}

fn worker() -> (u64, u64) {
    let (mut hot, mut cold, mut sink) = (0, 0, 1);
    while !STOP.load(Ordering::Relaxed) {
        let t0 = cpu_ns(CLOCK_THREAD_CPUTIME_ID);
        sink = hot_phase(sink);
        let t1 = cpu_ns(CLOCK_THREAD_CPUTIME_ID);
        sink = cold_phase(sink);
        let t2 = cpu_ns(CLOCK_THREAD_CPUTIME_ID);
        hot += t1 - t0;
        cold += t2 - t1;
    }
    black_box(sink);
    (hot, cold)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, threads, seconds, truth] = &args[..] else {
        eprintln!("usage: phases-rs THREADS SECONDS TRUTH_FILE");
        std::process::exit(2);
    };
    let process_start = cpu_ns(CLOCK_PROCESS_CPUTIME_ID);
    let workers: Vec<_> = (0..threads.parse::<usize>().unwrap())
        .map(|_| thread::spawn(worker))
        .collect();
    thread::sleep(Duration::from_secs_f64(seconds.parse().unwrap()));
    STOP.store(true, Ordering::Relaxed);
    let (mut hot, mut cold) = (0, 0);
    for worker in workers {
        let (h, c) = worker.join().unwrap();
        hot += h;
        cold += c;
    }
    let process = cpu_ns(CLOCK_PROCESS_CPUTIME_ID) - process_start;
    std::fs::write(
        truth,
        format!("{{\"hot_phase\": {hot}, \"cold_phase\": {cold}, \"process_ns\": {process}}}\n"),
    )
    .unwrap();
}
