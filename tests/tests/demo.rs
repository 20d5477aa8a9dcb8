//! The demo topology (demo/run.sh): a slow service and a slow network hop (tbf on a veth into a
//! network namespace), and `sockspan blame` must name both.

use std::{path::PathBuf, process::Command, time::Duration};

use sockspan_tests::{free_port, run_ok, sockspan_bin};

#[test]
fn blame_names_the_slow_service_and_the_slow_hop_in_the_demo() {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../demo/run.sh");
    let out = run_ok(
        Command::new("bash")
            .arg(script)
            .arg("--check")
            .env("SOCKSPAN_BIN", sockspan_bin())
            .env("SOCKSPAN_DEMO_UI_PORT", free_port().to_string()),
        Duration::from_mins(2),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("service features") && text.contains("hop gateway → model"),
        "{text}"
    );
    assert!(text.contains("demo: OK"), "{text}");
}
