//! Replays cache traces through larder's policies, moka, quick_cache, an exact
//! LRU and Bélády's optimum, and prints the hit ratios as a markdown table.
//!
//! ```text
//! cargo run --release --example hitratio -- [TRACE...] [--capacity N,N] [--percent 5,20]
//!     [--threads N [--block B]] [--only COLUMN,COLUMN] [--traces-dir DIR]
//!     [--format arc|lirs|be32|be64]
//! ```
//!
//! A TRACE is a path, or a path relative to `--traces-dir` (default
//! `../shared/traces`); with no TRACE the 15 traces of `ALL_TRACES` (those
//! that directory's README lists) are replayed. Formats and compressions (`.zst`, `.gz`, `.xz`) are
//! recognised from the file name; see `../shared/traces/README.md`.
//! `--percent` derives capacities from the trace's number of distinct keys.
//! `--threads N` replays with N threads sharing each cache, serving the trace
//! in its order from a shared cursor; with `--block B` thread t serves blocks
//! t, t + N, … of B requests instead (a reordered trace: N streams a block
//! apart). `--only` picks columns (e.g. `--only "OPT,larder TinyLfu"`).

use std::collections::{BinaryHeap, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use larder::{Cache, Eviction};

const ALL_TRACES: &[&str] = &[
    "arc/OLTP.lis.zst",
    "arc/P3.lis.zst",
    "arc/P12.lis.zst",
    "lirs/2_pools.trace.gz",
    "lirs/cs.trace.gz",
    "lirs/loop.trace.gz",
    "lirs/multi1.trace.gz",
    "lirs/multi2.trace.gz",
    "lirs/sprite.trace.gz",
    "lirs/scan.trace.gz",
    "cache2k/web07.trace.xz",
    "cache2k/orm-busy.trace.xz",
    "scarab/scarab-recs.trace.xz",
    "corda/trace_vaultservice.gz",
    "cloud_physics/cloudPhysicsIO.txt",
];

#[derive(Clone, Copy, Debug, PartialEq)]
enum Format {
    Arc,
    Lirs,
    Be32,
    Be64,
}

/// The format of the trace at `path`, from its file name and the name of the
/// folder it sits in (as in `../shared/traces`), never from folders further
/// up, whose names say nothing of the file.
fn guess_format(path: &Path) -> Format {
    let name_of = |p: Option<&Path>| {
        p.and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let file = name_of(Some(path));
    let folder = name_of(path.parent());
    let either = |word: &str| file.contains(word) || folder.contains(word);
    if file.contains(".lis") {
        Format::Arc
    } else if either("cache2k") {
        Format::Be32
    } else if either("scarab") || either("corda") {
        Format::Be64
    } else {
        Format::Lirs
    }
}

fn open(path: &Path) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let mut file = BufReader::new(File::open(path)?);
    let mut out = Vec::new();
    match path.extension().and_then(|e| e.to_str()) {
        Some("zst") => {
            ruzstd::decoding::StreamingDecoder::new(&mut file)?.read_to_end(&mut out)?;
        }
        Some("gz") => {
            flate2::read::GzDecoder::new(file).read_to_end(&mut out)?;
        }
        Some("xz") => lzma_rs::xz_decompress(&mut file, &mut out)?,
        _ => {
            file.read_to_end(&mut out)?;
        }
    }
    Ok(out)
}

fn parse(bytes: &[u8], format: Format) -> Result<Vec<u64>, Box<dyn std::error::Error>> {
    let mut keys = Vec::new();
    match format {
        Format::Be32 => keys.extend(
            bytes
                .chunks_exact(4)
                .map(|c| u64::from(u32::from_be_bytes(c.try_into().unwrap()))),
        ),
        Format::Be64 => keys.extend(
            bytes
                .chunks_exact(8)
                .map(|c| u64::from_be_bytes(c.try_into().unwrap())),
        ),
        Format::Lirs => {
            for line in bytes.lines() {
                let line = line?;
                let line = line.trim();
                if line.is_empty() || line == "*" {
                    continue;
                }
                keys.push(line.parse()?);
            }
        }
        Format::Arc => {
            for line in bytes.lines() {
                let line = line?;
                let mut fields = line.split_ascii_whitespace();
                let (Some(start), Some(count)) = (fields.next(), fields.next()) else {
                    continue;
                };
                let start: u64 = start.parse()?;
                let count: u64 = count.parse()?;
                keys.extend(start..start + count);
            }
        }
    }
    Ok(keys)
}

/// Bélády's MIN: on a miss, evict the resident key (or bypass the new one) whose
/// next use is farthest in the future.
fn optimal(trace: &[u64], capacity: usize) -> u64 {
    let mut next_use = vec![usize::MAX; trace.len()];
    let mut last: HashMap<u64, usize> = HashMap::new();
    for (i, &k) in trace.iter().enumerate().rev() {
        if let Some(&j) = last.get(&k) {
            next_use[i] = j;
        }
        last.insert(k, i);
    }
    let mut resident: HashMap<u64, usize> = HashMap::with_capacity(capacity + 1);
    let mut heap: BinaryHeap<(usize, u64)> = BinaryHeap::new();
    let mut hits = 0;
    for (i, &k) in trace.iter().enumerate() {
        let next = next_use[i];
        if resident.insert(k, next).is_some() {
            hits += 1;
        }
        heap.push((next, k));
        while resident.len() > capacity {
            let (n, victim) = heap.pop().expect("heap covers residents");
            if resident.get(&victim) == Some(&n) {
                resident.remove(&victim);
            }
        }
    }
    hits
}

/// An exact global LRU as an independent reference (slab-linked list).
fn exact_lru(trace: &[u64], capacity: usize) -> u64 {
    const NIL: usize = usize::MAX;
    let mut index: HashMap<u64, usize> = HashMap::with_capacity(capacity);
    let mut nodes: Vec<(u64, usize, usize)> = Vec::with_capacity(capacity); // key, prev, next
    let (mut head, mut tail) = (NIL, NIL);
    let mut hits = 0;
    for &k in trace {
        let node = if let Some(&i) = index.get(&k) {
            hits += 1;
            if i == tail {
                continue;
            }
            let (_, p, n) = nodes[i];
            if p == NIL {
                head = n
            } else {
                nodes[p].2 = n
            }
            nodes[n].1 = p;
            i
        } else if nodes.len() < capacity {
            index.insert(k, nodes.len());
            nodes.push((k, NIL, NIL));
            nodes.len() - 1
        } else {
            let victim = head;
            head = nodes[victim].2;
            if head == NIL {
                tail = NIL
            } else {
                nodes[head].1 = NIL
            }
            index.remove(&nodes[victim].0);
            index.insert(k, victim);
            nodes[victim].0 = k;
            victim
        };
        nodes[node].1 = tail;
        nodes[node].2 = NIL;
        if tail == NIL {
            head = node
        } else {
            nodes[tail].2 = node
        }
        tail = node;
    }
    hits
}

/// How many threads share a cache during a replay, and how they split the trace.
#[derive(Clone, Copy)]
struct Threads {
    n: usize,
    /// `None`: the threads serve the trace in its order, as workers serve one
    /// stream of requests: each takes the next request from a shared cursor,
    /// so requests are reordered only among those in flight at once.
    /// `Some(b)`: thread t takes blocks t, t + n, t + 2n, … of `b` requests.
    /// The threads then run through the trace side by side, a block apart,
    /// which replays a different trace (n streams merged) whatever the cache.
    block: Option<usize>,
}

/// Replays `trace` as cache-aside (get, insert on a miss) on threads sharing
/// the cache; returns the hits.
fn replay<C: Sync>(
    trace: &[u64],
    threads: Threads,
    cache: &C,
    get: impl Fn(&C, u64) -> bool + Sync,
    insert: impl Fn(&C, u64) + Sync,
) -> u64 {
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    let hits = AtomicU64::new(0);
    let next = AtomicUsize::new(0);
    let serve = |k: u64| {
        if get(cache, k) {
            1
        } else {
            insert(cache, k);
            0
        }
    };
    std::thread::scope(|s| {
        for t in 0..threads.n {
            let (hits, next, serve) = (&hits, &next, &serve);
            s.spawn(move || {
                let mut mine = 0;
                match threads.block {
                    None => {
                        while let Some(&k) = trace.get(next.fetch_add(1, Ordering::Relaxed)) {
                            mine += serve(k);
                        }
                    }
                    Some(block) => {
                        for chunk in trace.chunks(block).skip(t).step_by(threads.n) {
                            mine += chunk.iter().map(|&k| serve(k)).sum::<u64>();
                        }
                    }
                }
                hits.fetch_add(mine, Ordering::Relaxed);
            });
        }
    });
    hits.into_inner()
}

/// `shards`: `None` for the default count (32 per core, fewer when a shard
/// would hold under 1,024 entries).
fn larder_hits(
    trace: &[u64],
    capacity: usize,
    threads: Threads,
    eviction: Eviction,
    shards: Option<usize>,
) -> u64 {
    let mut builder = Cache::builder()
        .max_capacity(capacity as u64)
        .eviction(eviction);
    if let Some(shards) = shards {
        builder = builder.shards(shards);
    }
    let cache: Cache<u64, ()> = builder.build().expect("capacity ≥ 1");
    replay(
        trace,
        threads,
        &cache,
        |c, k| c.get(&k).is_some(),
        |c, k| c.insert(k, ()),
    )
}

type Subject = fn(&[u64], usize, Threads) -> u64;

/// Every policy replayed, by column name. OPT and LRU are single-threaded
/// references whatever `--threads` says.
const SUBJECTS: &[(&str, Subject)] = &[
    ("OPT", |t, c, _| optimal(t, c)),
    ("LRU", |t, c, _| exact_lru(t, c)),
    ("larder TinyLfu", |t, c, n| {
        larder_hits(t, c, n, Eviction::TinyLfu, None)
    }),
    // One shard: one sketch and one climber see the whole stream, what
    // sharing them across shards would give at best.
    ("larder TinyLfu 1 shard", |t, c, n| {
        larder_hits(t, c, n, Eviction::TinyLfu, Some(1))
    }),
    ("larder Lru", |t, c, n| {
        larder_hits(t, c, n, Eviction::Lru, None)
    }),
    ("larder Lfu", |t, c, n| {
        larder_hits(t, c, n, Eviction::Lfu, None)
    }),
    ("moka", |t, c, n| {
        let cache = moka::sync::Cache::new(c as u64);
        replay(
            t,
            n,
            &cache,
            |c, k| c.get(&k).is_some(),
            |c, k| c.insert(k, ()),
        )
    }),
    ("quick_cache", |t, c, n| {
        let cache = quick_cache::sync::Cache::new(c);
        replay(
            t,
            n,
            &cache,
            |c, k| c.get(&k).is_some(),
            |c, k| c.insert(k, ()),
        )
    }),
];

fn list(value: &str) -> Result<Vec<u64>, Box<dyn std::error::Error>> {
    value
        .split(',')
        .map(|v| {
            v.trim()
                .parse::<u64>()
                .map_err(|e| format!("bad number {v:?}: {e}").into())
        })
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut traces = Vec::new();
    let mut capacities = Vec::new();
    let mut percents = Vec::new();
    let mut dir = PathBuf::from("../shared/traces");
    let mut format = None;
    let mut threads = Threads { n: 1, block: None };
    let mut only: Vec<String> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--capacity" => capacities = list(&value()?)?,
            "--percent" => percents = list(&value()?)?,
            "--traces-dir" => dir = PathBuf::from(value()?),
            "--threads" => threads.n = value()?.parse::<usize>()?.max(1),
            "--block" => threads.block = Some(value()?.parse::<usize>()?.max(1)),
            "--only" => only = value()?.split(',').map(|s| s.trim().to_string()).collect(),
            "--format" => {
                format = Some(match value()?.as_str() {
                    "arc" => Format::Arc,
                    "lirs" => Format::Lirs,
                    "be32" => Format::Be32,
                    "be64" => Format::Be64,
                    other => return Err(format!("unknown format {other:?}").into()),
                })
            }
            "-h" | "--help" => {
                println!("usage: hitratio [TRACE...] [--capacity N,N] [--percent P,P] [--threads N [--block B]] [--only COLUMN,COLUMN] [--traces-dir DIR] [--format arc|lirs|be32|be64]");
                return Ok(());
            }
            _ if arg.starts_with("--") => return Err(format!("unknown option {arg}").into()),
            _ => traces.push(arg),
        }
    }
    if capacities.is_empty() && percents.is_empty() {
        percents = vec![5, 20];
    }
    if traces.is_empty() {
        traces = ALL_TRACES.iter().map(|s| s.to_string()).collect();
    }
    let subjects: Vec<&(&str, Subject)> = SUBJECTS
        .iter()
        .filter(|(name, _)| only.is_empty() || only.iter().any(|o| o == name))
        .collect();
    if subjects.is_empty() {
        let names: Vec<&str> = SUBJECTS.iter().map(|s| s.0).collect();
        return Err(format!("--only matches none of {names:?}").into());
    }
    let names: Vec<&str> = subjects.iter().map(|s| s.0).collect();
    println!("| trace | capacity | {} |", names.join(" | "));
    println!("|---|---:|{}", "---:|".repeat(names.len()));
    let mut sums = vec![0.0; names.len()];
    let mut cases = 0;
    for name in &traces {
        let path = if Path::new(name).exists() {
            PathBuf::from(name)
        } else {
            dir.join(name)
        };
        let keys = parse(&open(&path)?, format.unwrap_or_else(|| guess_format(&path)))?;
        let distinct = {
            let mut sorted = keys.clone();
            sorted.sort_unstable();
            sorted.dedup();
            sorted.len() as u64
        };
        let mut caps: Vec<u64> = capacities.clone();
        caps.extend(percents.iter().map(|p| (distinct * p / 100).max(1)));
        let short = Path::new(name)
            .file_name()
            .unwrap_or_default()
            .to_string_lossy();
        let short = short.split('.').next().unwrap_or_default();
        for capacity in caps {
            let hits: Vec<u64> = subjects
                .iter()
                .map(|(_, run)| run(&keys, capacity as usize, threads))
                .collect();
            let ratios: Vec<f64> = hits
                .iter()
                .map(|&h| 100.0 * h as f64 / keys.len() as f64)
                .collect();
            for (s, r) in sums.iter_mut().zip(&ratios) {
                *s += r;
            }
            cases += 1;
            let cells: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
            println!("| {short} | {capacity} | {} |", cells.join(" | "));
        }
    }
    if cases > 1 {
        let cells: Vec<String> = sums
            .iter()
            .map(|s| format!("**{:.2}**", s / cases as f64))
            .collect();
        println!("| mean of {cases} | | {} |", cells.join(" | "));
    }
    Ok(())
}
