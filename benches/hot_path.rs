//! The hot path of one document update, step by step, against raw `yrs` on the same
//! updates (the first transactions of the real automerge-paper editing trace):
//!
//! - `raw_yrs_apply`: decode + apply into a bare `yrs` document (the floor);
//! - `check`: the structural check every client update passes before yrs sees it;
//! - `document_apply`: Tandem's `Document::apply_update` (check + apply + the delta);
//! - `document_apply_batched`: `Document::apply_updates` on runs of 512, what a room does
//!   with a burst (one transaction and one delta per run);
//! - `frame_encode`: wrapping a delta into the y-websocket frame, once per update;
//! - `fanout/N`: handing that one frame to N session mailboxes (actix `Recipient`s).
//!
//! `cargo bench --bench hot_path`; compare each figure with `raw_yrs_apply` from the same
//! run (the machine is shared and noisy).

use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
#[path = "../examples/support/trace.rs"]
mod trace;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tandem::protocol::update_check::check_update_v1;
use tandem::protocol::ysync::Message as SyncMessage;
use tandem::room::Document;
use yrs::updates::decoder::Decode;
use yrs::{Doc, Text, Transact, Update};

const UPDATES: usize = 20_000;

/// The trace: `$TANDEM_TRACE`, else `../shared/data/automerge-paper.json.gz` beside the
/// repository.
fn trace_path() -> std::path::PathBuf {
    std::env::var_os("TANDEM_TRACE").map_or_else(
        || {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../shared/data/automerge-paper.json.gz")
        },
        Into::into,
    )
}

/// The first `UPDATES` transactions of the trace, one v1 update each; without the trace
/// file, a synthetic one (single-character edits at scattered positions), said loudly.
fn trace_updates() -> Vec<Vec<u8>> {
    let path = trace_path();
    if !path.exists() {
        eprintln!(
            "hot_path: {} not found (set TANDEM_TRACE); using a synthetic trace",
            path.display()
        );
        return synthetic_updates();
    }
    trace::load(&path, UPDATES)
        .unwrap_or_else(|e| panic!("the trace {}: {e}", path.display()))
        .0
}

fn synthetic_updates() -> Vec<Vec<u8>> {
    let doc = Doc::new();
    let text = doc.get_or_insert_text("text");
    let mut state = 0x2545_f491_u64;
    (0..UPDATES)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            let mut t = doc.transact_mut();
            let len = text.len(&t);
            let pos = if len == 0 {
                0
            } else {
                (state >> 33) as u32 % (len + 1)
            };
            if state.is_multiple_of(7) && pos < len {
                text.remove_range(&mut t, pos, 1);
            } else {
                text.insert(&mut t, pos, "x");
            }
            t.encode_update_v1()
        })
        .collect()
}

struct Sink;

impl Actor for Sink {
    type Context = Context<Self>;
}

#[derive(Message, Clone)]
#[rtype(result = "()")]
struct Frame(#[allow(dead_code)] Bytes);

impl Handler<Frame> for Sink {
    type Result = ();
    fn handle(&mut self, _msg: Frame, _ctx: &mut Self::Context) {}
}

fn hot_path(c: &mut Criterion) {
    let updates = trace_updates();
    let mut group = c.benchmark_group("update");
    group.throughput(Throughput::Elements(updates.len() as u64));
    group.sample_size(10);
    group.bench_function("raw_yrs_apply", |b| {
        b.iter(|| {
            let doc = Doc::new();
            for u in &updates {
                let update = Update::decode_v1(u).unwrap();
                doc.transact_mut().apply_update(update).unwrap();
            }
        })
    });
    group.bench_function("check", |b| {
        b.iter(|| {
            for u in &updates {
                check_update_v1(u).unwrap();
            }
        })
    });
    group.bench_function("document_apply", |b| {
        b.iter(|| {
            let mut doc = Document::new();
            for u in &updates {
                doc.apply_update(u).unwrap();
            }
        })
    });
    group.bench_function("document_apply_batched", |b| {
        b.iter(|| {
            let mut doc = Document::new();
            for run in updates.chunks(512) {
                let run: Vec<&[u8]> = run.iter().map(Vec::as_slice).collect();
                doc.apply_updates(&run).unwrap();
            }
        })
    });
    let deltas: Vec<Bytes> = {
        let mut doc = Document::new();
        updates
            .iter()
            .filter_map(|u| doc.apply_update(u).unwrap())
            .map(Bytes::from)
            .collect()
    };
    group.bench_function("frame_encode", |b| {
        b.iter(|| {
            for d in &deltas {
                std::hint::black_box(SyncMessage::Update(d.clone()).encode());
            }
        })
    });
    group.finish();

    let mut group = c.benchmark_group("fanout");
    group.sample_size(10);
    let frame = SyncMessage::Update(deltas[0].clone()).encode();
    let system = System::new();
    for n in [10usize, 100, 1000] {
        let recipients: Vec<Recipient<Frame>> =
            system.block_on(async { (0..n).map(|_| Sink.start().recipient()).collect() });
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter_custom(|iters| {
                system.block_on(async {
                    let mut spent = Duration::ZERO;
                    for i in 0..iters {
                        let started = Instant::now();
                        for r in &recipients {
                            r.do_send(Frame(frame.clone()));
                        }
                        spent += started.elapsed();
                        // Let the mailboxes drain (not timed), as the sessions would.
                        if i % 16 == 15 {
                            tokio::task::yield_now().await;
                        }
                    }
                    tokio::task::yield_now().await;
                    spent
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
