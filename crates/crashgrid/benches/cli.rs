//! `crashgrid symbolicate` as a whole process against `llvm-symbolizer` as a whole process, on
//! the same 20,000 addresses of a real program nobody wrote for this benchmark: the release
//! `crashgrid` binary itself (Rust, the workspace's `line-tables-only` debug info, tens of MB),
//! each address inside a function of its `.text`. What a user running the command sees:
//! process start, reading the debug file, symbolication and writing the answer.
//!
//! * cold: crashgrid with an empty SymCache directory (conversion included); llvm-symbolizer's
//!   first run (it has no persistent cache: every run parses the DWARF again).
//! * warm: crashgrid with its SymCache on disk; llvm-symbolizer's next run (page cache warm).
//!
//! Each figure is the best of 3 runs; the ratio is llvm-symbolizer's time over crashgrid's.
//! Output goes to files (crashgrid: compact JSON and text; llvm-symbolizer: JSON).
//!
//! Run: `cargo bench -p crashgrid --bench cli` (needs nm and llvm-symbolizer).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

const ADDRESSES: usize = 20_000;
const FRAMES_PER_THREAD: usize = 2_000;

fn time(mut run: impl FnMut()) -> Duration {
    (0..3)
        .map(|_| {
            let t = Instant::now();
            run();
            t.elapsed()
        })
        .min()
        .unwrap()
}

fn check(status: std::process::ExitStatus, what: &str) {
    assert!(status.success(), "{what} failed: {status}");
}

fn main() {
    let binary = Path::new(env!("CARGO_BIN_EXE_crashgrid"));
    let dir = tempfile::tempdir().unwrap();

    // Function ranges of the binary's text, from nm.
    let nm = Command::new("nm")
        .args(["--print-size", "--defined-only"])
        .arg(binary)
        .output()
        .expect("nm is installed");
    let ranges: Vec<(u64, u64)> = String::from_utf8_lossy(&nm.stdout)
        .lines()
        .filter_map(|l| {
            let p: Vec<&str> = l.split_whitespace().collect();
            (p.len() == 4 && matches!(p[2], "T" | "t")).then(|| {
                (
                    u64::from_str_radix(p[0], 16).unwrap(),
                    u64::from_str_radix(p[1], 16).unwrap(),
                )
            })
        })
        .filter(|(_, size)| *size > 0)
        .collect();
    assert!(ranges.len() > 1000, "{} functions", ranges.len());
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let addrs: Vec<u64> = (0..ADDRESSES)
        .map(|_| {
            let (start, size) = ranges[rng.gen_range(0..ranges.len())];
            start + rng.gen_range(0..size)
        })
        .collect();

    // The same addresses for both: one event (10 threads of 2,000 frames), one list.
    let store = dir.path().join("store");
    check(
        Command::new(binary)
            .args(["symbols", "add"])
            .arg(binary)
            .arg("--store")
            .arg(&store)
            .stdout(Stdio::null())
            .status()
            .unwrap(),
        "symbols add",
    );
    let debug_id = symbolicate::inspect(&std::fs::read(binary).unwrap()).unwrap()[0]
        .debug_id
        .to_string();
    let threads: Vec<serde_json::Value> = addrs
        .chunks(FRAMES_PER_THREAD)
        .enumerate()
        .map(|(i, chunk)| {
            serde_json::json!({
                "id": i,
                "crashed": i == 0,
                "frames": chunk.iter().map(|a| serde_json::json!({"instruction_addr": format!("{a:#x}")})).collect::<Vec<_>>()
            })
        })
        .collect();
    let event = serde_json::json!({
        "event_id": "bench-cli", "timestamp": 1_795_598_000u64,
        "app": {"id": "crashgrid", "version": "1"}, "platform": "linux",
        "os": {"name": "Linux", "version": "6"}, "exception": {"type": "SIGSEGV"},
        "modules": [{"type": "elf", "code_file": "crashgrid", "debug_id": debug_id, "image_addr": "0x0"}],
        "threads": threads
    });
    let event_file = dir.path().join("event.json");
    std::fs::write(&event_file, event.to_string()).unwrap();
    let list: String = addrs.iter().map(|a| format!("{a:#x}\n")).collect();
    let list_file = dir.path().join("addresses.txt");
    std::fs::write(&list_file, list).unwrap();

    let llvm = || {
        let out = std::fs::File::create(dir.path().join("llvm.json")).unwrap();
        check(
            Command::new("llvm-symbolizer")
                .arg(format!("--obj={}", binary.display()))
                .args(["--output-style=JSON", "--inlines", "--demangle"])
                .stdin(std::fs::File::open(&list_file).unwrap())
                .stdout(out)
                .status()
                .expect("llvm-symbolizer is installed"),
            "llvm-symbolizer",
        );
    };
    let cache = dir.path().join("symcache");
    let crashgrid = |format: &[&str]| {
        let out = std::fs::File::create(dir.path().join("crashgrid.out")).unwrap();
        check(
            Command::new(binary)
                .arg("symbolicate")
                .arg(&event_file)
                .arg("--store")
                .arg(&store)
                .arg("--cache-dir")
                .arg(&cache)
                .args(format)
                .env("CRASHGRID_LOG", "warn")
                .stdout(out)
                .status()
                .unwrap(),
            "crashgrid symbolicate",
        );
    };

    let llvm_cold = time(llvm);
    let llvm_warm = time(llvm);
    let cold = time(|| {
        let _ = std::fs::remove_dir_all(&cache);
        crashgrid(&["--json"]);
    });
    let warm_json = time(|| crashgrid(&["--json"]));
    let warm_pretty = time(|| crashgrid(&["--json", "--pretty"]));
    let warm_text = time(|| crashgrid(&[]));
    let size = std::fs::metadata(binary).unwrap().len();
    println!(
        "whole process, {ADDRESSES} addresses of the release crashgrid binary ({} MB), best of 3:",
        size / 1_000_000
    );
    let row = |what: &str, ours: Duration, theirs: Duration| {
        println!(
            "  {what:<28} crashgrid {:>8.1} ms   llvm-symbolizer {:>8.1} ms   ratio {:.2}x",
            ours.as_secs_f64() * 1e3,
            theirs.as_secs_f64() * 1e3,
            theirs.as_secs_f64() / ours.as_secs_f64()
        );
    };
    row("cold (conversion included)", cold, llvm_cold);
    row("warm, --json", warm_json, llvm_warm);
    row("warm, --json --pretty", warm_pretty, llvm_warm);
    row("warm, text", warm_text, llvm_warm);
}
