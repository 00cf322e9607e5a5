//! Writes seed files for the `open_*` targets into `corpus/<target>/`: valid small queues of
//! each kind, empty and holding messages (and, for the service, pending requests and replies).
//! Run from `fuzz/`: `cargo run --example make_seeds`.

use shmq::{PipelineOptions, Overflow, Pipeline, PubSub, PubSubOptions, Service, ServiceOptions};
use std::path::Path;

fn save(target: &str, name: &str, path: &Path) {
    let dir = Path::new("corpus").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(path, dir.join(name)).unwrap();
    std::fs::remove_file(path).unwrap();
}

fn main() {
    let path = shmq_fuzz::scratch_path("seed");
    let _ = std::fs::remove_file(&path);

    for (name, messages) in [("empty", 0u8), ("some", 3), ("full", 4)] {
        let q = Pipeline::create(
            &path,
            &PipelineOptions::new()
                .capacity(4)
                .max_message(32)
                .max_participants(4),
        )
        .unwrap();
        let p = q.producer().unwrap();
        for i in 0..messages {
            p.send(&[i; 7]).unwrap();
        }
        drop(p);
        // One message received and dropped (acknowledged), to move the read position.
        if messages == 3 {
            drop(q.consumer().unwrap().try_recv().unwrap());
        }
        drop(q);
        save("open_pipeline", name, &path);
    }

    for (name, overflow, messages) in [
        ("drop-empty", Overflow::DropOldest, 0u8),
        ("drop-wrapped", Overflow::DropOldest, 6),
        ("block-some", Overflow::Block, 2),
    ] {
        let ch = PubSub::create(
            &path,
            &PubSubOptions::new()
                .capacity(4)
                .max_message(32)
                .max_topic(8)
                .max_publishers(2)
                .max_subscribers(2)
                .overflow(overflow),
        )
        .unwrap();
        let p = ch.publisher().unwrap();
        for i in 0..messages {
            p.try_publish(if i % 2 == 0 { b"t" } else { b"t/x" }, &[i; 5])
                .unwrap();
        }
        drop(p);
        drop(ch);
        save("open_pubsub", name, &path);
    }

    for (name, requests, served) in [("empty", 0u8, 0u8), ("pending", 2, 1)] {
        let svc = Service::create(
            &path,
            &ServiceOptions::new()
                .request_capacity(4)
                .reply_capacity(2)
                .max_message(32)
                .max_clients(2)
                .max_servers(2),
        )
        .unwrap();
        let c = svc.client().unwrap();
        let s = svc.server().unwrap();
        for i in 0..requests {
            let _pending = c.try_send(&[i; 6]).unwrap();
        }
        for _ in 0..served {
            s.try_recv().unwrap().reply(b"ok").unwrap();
        }
        // The client stays attached in the file: leak its handles' effects by keeping the
        // file as it is now (copied before the handles are dropped).
        std::fs::copy(&path, shmq_fuzz::scratch_path("seed-copy")).unwrap();
        drop((c, s, svc));
        std::fs::remove_file(&path).unwrap();
        save("open_service", name, &shmq_fuzz::scratch_path("seed-copy"));
    }
}
