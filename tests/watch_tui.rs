//! `shardq watch` in a pseudo-terminal, its screen parsed: at 80x24 and at 200x50, while shard
//! moves are in flight, the header is at the top, every move in flight (as `shardq status
//! --json` reports it at the same time) has its line, no line wraps, and `q` quits and gives
//! the terminal back.

mod common;

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::UpCluster;
use portable_pty::{CommandBuilder, PtySize};
use shardq_producer::Producer;
use shardq_protocol::{Request, ShardSpec};

/// One `shardq watch` in a pseudo-terminal of a fixed size, its output fed to a terminal
/// emulator on a reader thread.
struct Watch {
    rows: u16,
    cols: u16,
    screen: Arc<Mutex<vt100::Parser>>,
    child: Box<dyn portable_pty::Child + Send + Sync>,
    writer: Box<dyn Write + Send>,
    _master: Box<dyn portable_pty::MasterPty + Send>,
}

impl Watch {
    fn start(rows: u16, cols: u16, router: &str, token: &std::path::Path) -> Watch {
        let pair = portable_pty::native_pty_system()
            .openpty(PtySize {
                rows,
                cols,
                pixel_width: 0,
                pixel_height: 0,
            })
            .expect("a pseudo-terminal");
        let mut cmd = CommandBuilder::new(env!("CARGO_BIN_EXE_shardq"));
        cmd.args(["watch", "--interval-ms", "200", "--broker", router]);
        cmd.arg("--token-file");
        cmd.arg(token);
        cmd.env("TERM", "xterm-256color");
        let child = pair.slave.spawn_command(cmd).expect("shardq watch starts");
        drop(pair.slave);
        let mut reader = pair.master.try_clone_reader().expect("pty reader");
        let writer = pair.master.take_writer().expect("pty writer");
        let screen = Arc::new(Mutex::new(vt100::Parser::new(rows, cols, 0)));
        let feed = screen.clone();
        // Ends when the child exits and the pty closes.
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                feed.lock().unwrap().process(&buf[..n]);
            }
        });
        Watch {
            rows,
            cols,
            screen,
            child,
            writer,
            _master: pair.master,
        }
    }

    /// The screen's rows, and whether any of them wrapped.
    fn snapshot(&self) -> (Vec<String>, bool) {
        let p = self.screen.lock().unwrap();
        let s = p.screen();
        let rows: Vec<String> = s.rows(0, self.cols).collect();
        let wrapped = (0..self.rows).any(|r| s.row_wrapped(r));
        (rows, wrapped)
    }

    /// The footer's refresh count (`update #N`), once the first frame is drawn.
    fn updates(&self) -> Option<u64> {
        let (rows, _) = self.snapshot();
        let last = rows.last()?;
        let n = last.strip_prefix("update #")?;
        n.split(' ').next()?.parse().ok()
    }

    /// Waits (bounded) for a frame drawn from a status fetched after this call.
    fn wait_fresh_frame(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        let start = loop {
            if let Some(n) = self.updates() {
                break n;
            }
            assert!(
                Instant::now() < deadline,
                "watch drew no frame: {:#?}",
                self.snapshot()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        // One refresh may have been in flight already; the second after it is fresh.
        while self.updates().unwrap_or(0) < start + 2 {
            assert!(
                Instant::now() < deadline,
                "watch stopped refreshing at {}x{}: {:#?}",
                self.cols,
                self.rows,
                self.snapshot()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `q` and waits (bounded) for a clean exit.
    fn quit(mut self) {
        self.writer.write_all(b"q").unwrap();
        self.writer.flush().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("watch did not quit on q within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "watch exited with {status:?}");
        // Give the reader thread the last bytes (leaving the alternate screen).
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.screen.lock().unwrap().screen().alternate_screen() {
            assert!(
                Instant::now() < deadline,
                "the terminal was left on the alternate screen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            !self.screen.lock().unwrap().screen().hide_cursor(),
            "the cursor was left hidden"
        );
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// `shardq status --json`'s moves in flight: (id, shard).
fn in_flight(router: &str, token: &std::path::Path) -> Vec<(u64, String)> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shardq"))
        .args(["status", "--json", "--broker", router, "--token-file"])
        .arg(token)
        .output()
        .expect("shardq status runs");
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json parses");
    v["moves"]
        .as_array()
        .expect("moves")
        .iter()
        .filter(|m| m["in_flight"] == true)
        .map(|m| {
            (
                m["id"].as_u64().unwrap(),
                m["shard"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Checks one screen against the moves in flight before and after it was drawn. Ok(true) when
/// at least one move was in flight throughout, so the check meant something.
fn check(w: &Watch, router: &str, token: &std::path::Path) -> Result<bool, String> {
    let before = in_flight(router, token);
    w.wait_fresh_frame();
    let (rows, wrapped) = w.snapshot();
    let after = in_flight(router, token);
    let screen = rows.join("\n");
    let size = format!("{}x{}", w.cols, w.rows);
    if std::env::var_os("SHARDQ_TEST_SHOW_SCREEN").is_some() {
        eprintln!("--- {size}, in flight before {before:?}, after {after:?}\n{screen}");
    }
    if !rows[0].starts_with("shardq watch ") || !rows[0].contains("epoch") {
        return Err(format!("{size}: no header on the top line:\n{screen}"));
    }
    if !rows[1].contains("state") || !rows[2].contains(" up ") {
        return Err(format!(
            "{size}: no broker lines under the header:\n{screen}"
        ));
    }
    if wrapped {
        return Err(format!("{size}: a line wrapped:\n{screen}"));
    }
    // In flight when the status was asked before the frame and still after it: on the frame.
    let throughout: Vec<_> = before.iter().filter(|m| after.contains(m)).collect();
    for (id, shard) in &throughout {
        let tag = format!("#{id:<4} {shard} ");
        if !rows.iter().any(|r| r.starts_with(&tag) && r.contains('%')) {
            return Err(format!(
                "{size}: move {tag:?} is in flight but not on the screen:\n{screen}"
            ));
        }
    }
    Ok(!throughout.is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_fits_80x24_and_200x50_with_every_move_in_flight() {
    // Moves throttled to 40 KB/s so copying 2,500-record shards takes several seconds; up to 8
    // at once, so several are in flight together.
    let up = UpCluster::start(
        2,
        &[
            "--broker-arg=--move-max-mbps=0.04",
            "--router-arg=--max-moves=8",
        ],
    )
    .await;
    let at = up.endpoint();
    let client = at.client().await;
    // 16 shards: Big carries the data that makes moves last, Small's shards move at once.
    for (t, p) in [("Big", 8), ("Small", 8)] {
        client
            .admin(Request::CreateTopic {
                name: t.into(),
                partitions: p,
                replication_factor: Some(1),
                min_insync: None,
                retention: Default::default(),
            })
            .await
            .unwrap();
    }
    let producer = Producer::connect(at.producer_config()).await.unwrap();
    let mut acks = Vec::new();
    for i in 0..20_000u64 {
        let mut v = vec![b'w'; 200];
        v[..8].copy_from_slice(&i.to_le_bytes());
        acks.push(
            producer
                .send(&ShardSpec::All("Big".into()), None, Bytes::from(v))
                .await
                .unwrap(),
        );
    }
    for a in acks {
        a.await.expect("preload acknowledged");
    }
    producer.close().await;

    let router = up.router.clone();
    let token = at.token.clone();
    let small = Watch::start(24, 80, &router, &token);
    let large = Watch::start(50, 200, &router, &token);
    // Both draw before anything moves: the header alone is checked.
    tokio::task::block_in_place(|| {
        for w in [&small, &large] {
            check(w, &router, &token).unwrap();
        }
    });

    // Broker 3 joins: about a third of the shards move to it.
    let (id, _) = shardq::up::request_broker(up.dir.path()).await.unwrap();
    assert_eq!(id, 3);
    let checked = tokio::task::block_in_place(|| {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut checked = [0u32; 2];
        // Two screens of each size, each with moves in flight throughout, or until the moves end.
        while checked.iter().any(|c| *c < 2) && Instant::now() < deadline {
            for (i, w) in [&small, &large].into_iter().enumerate() {
                if check(w, &router, &token).unwrap() {
                    checked[i] += 1;
                }
            }
            if in_flight(&router, &token).is_empty() && checked.iter().all(|c| *c > 0) {
                break;
            }
        }
        checked
    });
    assert!(
        checked.iter().all(|c| *c > 0),
        "no screen was checked while moves were in flight (80x24: {}, 200x50: {})",
        checked[0],
        checked[1]
    );
    // The list shows all 16 shards at 200x50.
    let (rows, _) = large.snapshot();
    for t in ["Big", "Small"] {
        for p in 1..=8 {
            let name = format!("{t}:P{p} ");
            assert!(
                rows.iter().any(|r| r.starts_with(&name)),
                "{name} not listed at 200x50:\n{}",
                rows.join("\n")
            );
        }
    }
    tokio::task::block_in_place(|| {
        small.quit();
        large.quit();
    });
    up.stop().await;
}
