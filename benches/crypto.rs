//! Throughput of the crypto hot paths, in plaintext bytes per second.
//!
//! - `chunk_seal/SIZE`, `chunk_open/SIZE`: `FileKeys::seal_chunk` / `open_chunk`
//!   (AES-256-GCM-SIV, detached tag, in place, on whichever backend `crypto` uses) for 4 KiB
//!   .. 1 MiB chunks. `seal` includes drawing the 12-byte random nonce from the OS; `open`
//!   includes copying the ciphertext into the working buffer (open decrypts in place and
//!   zeroes the buffer on failure, so every iteration starts from a fresh copy of one sealed
//!   chunk).
//! - `chunk_open_into/SIZE`: `FileKeys::open_chunk_into`, which decrypts from the ciphertext
//!   into a separate buffer (what `Reader::read_chunk` uses on the mapped container).
//! - `container_read_chunk/CHUNK`, `container_read_at/{aligned,misaligned}/CHUNK`:
//!   `container::Reader` over an in-memory 16 MiB container with 64 KiB (the store default)
//!   and 1 MiB chunks. `read_at` reads 1 MiB, either starting on a chunk boundary or 4097 bytes
//!   past one (partial first/last chunks go through a scratch buffer).
//! - `safetensors_parse/1000_tensors`: `safetensors::parse` of a header with 1000 tensors.
//!
//! Run with `cargo bench --bench crypto [-- FILTER]`; `scripts/bench-crypto.sh` runs this and
//! the end-to-end `tvault put`/`get` measurement and prints a summary.

use std::hint::black_box;
use std::io::Cursor;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use tensorvault::container::{Container, Ownership, Reader, Writer};
use tensorvault::crypto::{FileKeys, PrivateKey, SecretKey, FILE_ID_LEN};
use tensorvault::safetensors;

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
const CHUNK_SIZES: [usize; 5] = [4 * KIB, 16 * KIB, 64 * KIB, 256 * KIB, MIB];
/// Plaintext size of the in-memory container used by the reader benchmarks.
const CONTAINER_LEN: usize = 16 * MIB;
const READ_LEN: usize = MIB;

fn size_label(n: usize) -> String {
    if n >= MIB {
        format!("{}MiB", n / MIB)
    } else {
        format!("{}KiB", n / KIB)
    }
}

/// Deterministic, incompressible-looking filler (the cipher does not care, but zeroes would
/// look suspicious in a profile).
fn filler(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn file_keys() -> FileKeys {
    FileKeys::derive(&SecretKey::from_bytes([7; 32]), &[9; FILE_ID_LEN])
}

fn bench_chunks(c: &mut Criterion) {
    let keys = file_keys();

    let mut seal = c.benchmark_group("chunk_seal");
    for &size in &CHUNK_SIZES {
        seal.throughput(Throughput::Bytes(size as u64));
        let mut buf = filler(size);
        seal.bench_with_input(
            BenchmarkId::from_parameter(size_label(size)),
            &size,
            |b, _| {
                // Sealing in place re-encrypts the previous ciphertext; the cost is the same.
                b.iter(|| black_box(keys.seal_chunk(3, false, black_box(&mut buf)).unwrap()))
            },
        );
    }
    seal.finish();

    let mut open = c.benchmark_group("chunk_open");
    for &size in &CHUNK_SIZES {
        open.throughput(Throughput::Bytes(size as u64));
        let mut sealed = filler(size);
        let (nonce, tag) = keys.seal_chunk(3, false, &mut sealed).unwrap();
        let mut work = vec![0u8; size];
        open.bench_with_input(
            BenchmarkId::from_parameter(size_label(size)),
            &size,
            |b, _| {
                b.iter(|| {
                    work.copy_from_slice(&sealed);
                    keys.open_chunk(3, false, &nonce, &tag, black_box(&mut work))
                        .unwrap();
                })
            },
        );
    }
    open.finish();

    // The read path's variant: decrypt from the (mapped) ciphertext into a separate buffer.
    let mut open_into = c.benchmark_group("chunk_open_into");
    for &size in &CHUNK_SIZES {
        open_into.throughput(Throughput::Bytes(size as u64));
        let mut sealed = filler(size);
        let (nonce, tag) = keys.seal_chunk(3, false, &mut sealed).unwrap();
        let mut out = vec![0u8; size];
        open_into.bench_with_input(
            BenchmarkId::from_parameter(size_label(size)),
            &size,
            |b, _| {
                b.iter(|| {
                    keys.open_chunk_into(3, false, &nonce, &tag, black_box(&sealed), &mut out)
                        .unwrap();
                })
            },
        );
    }
    open_into.finish();
}

/// Encrypts `CONTAINER_LEN` bytes into an in-memory container and opens it as the reader.
fn in_memory_reader(chunk_log2: u8) -> Reader<Vec<u8>> {
    let user = PrivateKey::generate().unwrap();
    let data_key = SecretKey::generate().unwrap();
    let recipients = [("bench".to_string(), user.public_key())];
    let ownership = Ownership::new(Some("bench".into()), 0, 0o644);
    let mut w = Writer::new(
        Cursor::new(Vec::new()),
        &data_key,
        chunk_log2,
        &recipients,
        &ownership,
    )
    .unwrap();
    w.write_all(&filler(CONTAINER_LEN)).unwrap();
    let bytes = w.finish().unwrap().into_inner();
    let container = Container::parse(bytes).unwrap();
    let key = container.unwrap_key("bench", &user).unwrap();
    container.open(&key).unwrap()
}

fn bench_container(c: &mut Criterion) {
    let readers: Vec<(u8, Reader<Vec<u8>>)> = [16u8, 20]
        .iter()
        .map(|&l| (l, in_memory_reader(l)))
        .collect();

    let mut group = c.benchmark_group("container_read_chunk");
    for (log2, reader) in &readers {
        let cs = 1usize << log2;
        group.throughput(Throughput::Bytes(cs as u64));
        let mut out = vec![0u8; cs];
        // A middle chunk: not the first, not the last.
        let index = reader.chunk_count() / 2;
        group.bench_function(BenchmarkId::from_parameter(size_label(cs)), |b| {
            b.iter(|| black_box(reader.read_chunk(black_box(index), &mut out).unwrap()))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("container_read_at");
    group.throughput(Throughput::Bytes(READ_LEN as u64));
    for (log2, reader) in &readers {
        let cs = 1usize << log2;
        let mut out = vec![0u8; READ_LEN];
        for (name, offset) in [("aligned", 4 * MIB), ("misaligned", 4 * MIB + 4097)] {
            let id = BenchmarkId::new(name, format!("chunk{}", size_label(cs)));
            group.bench_function(id, |b| {
                b.iter(|| {
                    let n = reader.read_at(black_box(offset as u64), &mut out).unwrap();
                    assert_eq!(n, READ_LEN);
                })
            });
        }
    }
    group.finish();
}

/// A safetensors file prefix (8-byte length + JSON header) describing `n` F32 tensors, and the
/// file length it implies.
fn safetensors_header(n: usize) -> (Vec<u8>, u64) {
    let mut json = String::from(r#"{"__metadata__":{"format":"pt","source":"bench"}"#);
    let mut offset = 0u64;
    for i in 0..n {
        let (rows, cols) = (64 + (i % 7) as u64, 32 + (i % 5) as u64);
        let end = offset + rows * cols * 4;
        json.push_str(&format!(
            r#","model.layers.{}.block.{}.weight":{{"dtype":"F32","shape":[{rows},{cols}],"data_offsets":[{offset},{end}]}}"#,
            i / 10,
            i % 10
        ));
        offset = end;
    }
    json.push('}');
    // Pad to 8 bytes like the reference writer does.
    while json.len() % 8 != 0 {
        json.push(' ');
    }
    let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(json.as_bytes());
    let file_len = bytes.len() as u64 + offset;
    (bytes, file_len)
}

fn bench_safetensors(c: &mut Criterion) {
    let (bytes, file_len) = safetensors_header(1000);
    let header = safetensors::parse(&bytes, file_len).unwrap();
    assert_eq!(header.tensors.len(), 1000);
    let mut group = c.benchmark_group("safetensors_parse");
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.bench_function("1000_tensors", |b| {
        b.iter(|| black_box(safetensors::parse(black_box(&bytes), file_len).unwrap()))
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(15)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_chunks, bench_container, bench_safetensors
}
criterion_main!(benches);
