//! The binary's command line: errors are one line on stderr and a non-zero exit.

use std::process::Command;

#[test]
fn a_queue_that_cannot_be_opened_is_a_one_line_error_and_exit_status_1() {
    let missing = std::env::temp_dir().join(format!("shmq-bridge-missing-{}", std::process::id()));
    let output = Command::new(env!("CARGO_BIN_EXE_shmq-bridge"))
        .args([
            "pipeline-out",
            missing.to_str().unwrap(),
            "--stream",
            "JOBS",
        ])
        // Nothing listens there; the queue is checked before NATS is contacted.
        .args(["--nats", "nats://127.0.0.1:9"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("shmq-bridge: ") && last.contains(missing.to_str().unwrap()),
        "{stderr}"
    );
}

#[test]
fn invalid_arguments_are_refused_with_usage() {
    let output = Command::new(env!("CARGO_BIN_EXE_shmq-bridge"))
        .args([
            "service-in",
            "/dev/shm/x",
            "--subject",
            "s",
            "--timeout",
            "0",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--timeout must be a positive"));
    let output = Command::new(env!("CARGO_BIN_EXE_shmq-bridge"))
        .arg("pipeline-out")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "clap's usage error");
}
