//! Measurements behind the choice of archive compression (issue 18), on the corpus
//! the bench reports on (`bench/src/corpus.rs`, included as is). Ignored by default:
//! run with
//!
//! ```sh
//! cargo test --release --no-default-features --features vendored \
//!     --test storage_measure -- --ignored --nocapture
//! ```
//!
//! The figures it printed on the development machine are in `docs/storage-size.md`.

#[path = "../bench/src/corpus.rs"]
#[allow(dead_code)]
mod corpus;

use std::collections::BTreeMap;
use std::time::Instant;

use corpus::{Corpus, Shape};
use zstd::bulk::{Compressor, Decompressor};
use zstd::dict::{DecoderDictionary, EncoderDictionary};
use zstd::zstd_safe::CParameter;

const T0: i64 = 1_767_225_600_000_000;

fn compressor<'a>(level: i32, dict: Option<&'a EncoderDictionary<'static>>) -> Compressor<'a> {
    let mut c = match dict {
        Some(d) => Compressor::with_prepared_dictionary(d).expect("compressor"),
        None => Compressor::new(level).expect("compressor"),
    };
    c.set_parameter(CParameter::ChecksumFlag(false))
        .expect("checksum");
    c.set_parameter(CParameter::DictIdFlag(false))
        .expect("dictid");
    c.set_parameter(CParameter::ContentSizeFlag(true))
        .expect("size");
    c
}

struct Run {
    bytes: usize,
    by_shape: BTreeMap<Shape, (usize, usize)>,
    compress_us: f64,
    decompress_us: f64,
}

fn run(rows: &[(Shape, String)], level: i32, dict: Option<&[u8]>) -> Run {
    let enc = dict.map(|d| EncoderDictionary::copy(d, level));
    let dec = dict.map(DecoderDictionary::copy);
    let mut c = compressor(level, enc.as_ref());
    let mut d = match &dec {
        Some(dd) => Decompressor::with_prepared_dictionary(dd).expect("decompressor"),
        None => Decompressor::new().expect("decompressor"),
    };
    let mut by_shape = BTreeMap::new();
    let mut bytes = 0;
    let t = Instant::now();
    let frames: Vec<Vec<u8>> = rows
        .iter()
        .map(|(_, x)| c.compress(x.as_bytes()).expect("compress"))
        .collect();
    let compress_us = t.elapsed().as_secs_f64() * 1e6 / rows.len() as f64;
    let t = Instant::now();
    for ((shape, x), f) in rows.iter().zip(&frames) {
        let back = d.decompress(f, x.len()).expect("decompress");
        assert_eq!(back.len(), x.len());
        let e = by_shape.entry(*shape).or_insert((0, 0));
        e.0 += x.len();
        e.1 += f.len();
        bytes += f.len();
    }
    let decompress_us = t.elapsed().as_secs_f64() * 1e6 / rows.len() as f64;
    Run {
        bytes,
        by_shape,
        compress_us,
        decompress_us,
    }
}

#[test]
#[ignore = "a measurement: prints figures, asserts nothing about them"]
fn measure_stanza_compression_methods() {
    let mut train_corpus = Corpus::new(18, "example.com", 50, T0);
    // The dictionary learns from the oldest messages and is judged on later ones.
    let train: Vec<String> = train_corpus.take(5000).iter().map(|m| m.xml()).collect();
    let test: Vec<(Shape, String)> = train_corpus
        .take(20_000)
        .into_iter()
        .map(|m| (m.shape, m.xml()))
        .collect();
    // Another server entirely (other contacts, other resources): a stale dictionary.
    let other: Vec<String> = Corpus::new(99, "other.example", 50, T0)
        .take(5000)
        .iter()
        .map(|m| m.xml())
        .collect();
    let raw: usize = test.iter().map(|(_, x)| x.len()).sum();
    let n = test.len() as f64;
    println!(
        "corpus: {} messages, {:.0} bytes/message raw",
        test.len(),
        raw as f64 / n
    );
    let mut shapes: BTreeMap<Shape, (usize, usize)> = BTreeMap::new();
    for (s, x) in &test {
        let e = shapes.entry(*s).or_default();
        e.0 += 1;
        e.1 += x.len();
    }
    for (s, (count, bytes)) in &shapes {
        println!(
            "  {:<15} {:5.1}% of messages, {:6.0} bytes mean",
            s.name(),
            *count as f64 * 100.0 / n,
            *bytes as f64 / *count as f64
        );
    }
    println!("\n| method | bytes/msg | ratio | compress µs/msg | decompress µs/msg |");
    println!("|---|---:|---:|---:|---:|");
    let line = |name: &str, r: &Run| {
        println!(
            "| {name} | {:.0} | {:.2} | {:.1} | {:.1} |",
            r.bytes as f64 / n,
            raw as f64 / r.bytes as f64,
            r.compress_us,
            r.decompress_us
        );
    };
    for level in [1, 3, 9, 19] {
        line(
            &format!("zstd {level}, no dictionary"),
            &run(&test, level, None),
        );
    }
    let mut chosen = None;
    for size in [8 << 10, 16 << 10, 32 << 10, 64 << 10, 112 << 10] {
        let t = Instant::now();
        let dict = zstd::dict::from_samples(&train, size).expect("train");
        let train_ms = t.elapsed().as_secs_f64() * 1e3;
        for level in [1, 3, 9] {
            let r = run(&test, level, Some(&dict));
            line(
                &format!(
                    "zstd {level}, {} KiB dictionary (trained in {train_ms:.0} ms)",
                    size >> 10
                ),
                &r,
            );
            if size == 32 << 10 && level == 3 {
                chosen = Some(r);
            }
        }
    }
    for samples in [1000, 2000] {
        let t = Instant::now();
        let dict = zstd::dict::from_samples(&train[..samples], 32 << 10).expect("train");
        let train_ms = t.elapsed().as_secs_f64() * 1e3;
        line(
            &format!("zstd 3, 32 KiB dictionary from {samples} samples ({train_ms:.0} ms)"),
            &run(&test, 3, Some(&dict)),
        );
    }
    let stale = zstd::dict::from_samples(&other, 32 << 10).expect("train");
    line(
        "zstd 3, 32 KiB dictionary of another server (stale)",
        &run(&test, 3, Some(&stale)),
    );
    if let Some(r) = chosen {
        println!("\nzstd 3 + 32 KiB dictionary, per shape:");
        for (s, (raw, packed)) in &r.by_shape {
            println!(
                "  {:<15} {:6.2}x ({} -> {} bytes)",
                s.name(),
                *raw as f64 / *packed as f64,
                raw,
                packed
            );
        }
    }
}
