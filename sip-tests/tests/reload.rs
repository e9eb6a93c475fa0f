//! Reloading the configuration of a running node (`understudy reload` = `POST /reload`, and
//! SIGHUP): users take effect at once; a file with errors or with a change that needs a
//! restart changes nothing and says why.

use std::time::Duration;

use anyhow::{Result, bail};
use sip_tests::Ua;
use sip_tests::cluster::{Solo, password_of};

/// REGISTER as `user` with its password: the final status.
async fn register(solo: &Solo, user: &str) -> Result<u16> {
    let mut ua = Ua::bind(user).await?;
    ua.set_server(solo.node.sip);
    ua.set_password(&password_of(user));
    Ok(ua.register().await?.status)
}

async fn digest(solo: &Solo) -> Result<String> {
    Ok(solo.node.get_json("/status").await?["config_digest"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

#[tokio::test]
async fn reload_adds_and_removes_users_and_refuses_what_needs_a_restart() -> Result<()> {
    let solo = Solo::start(&["alice"], "").await?;
    let r = run(&solo).await;
    if r.is_err() {
        eprintln!("log tail:\n{}", solo.node.log_tail(40));
    }
    r
}

async fn run(solo: &Solo) -> Result<()> {
    let path = solo.dir().join("solo.toml");
    let original = std::fs::read_to_string(&path)?;
    assert_eq!(register(solo, "zed").await?, 403, "zed is not a user yet");
    let before = digest(solo).await?;

    // SIGHUP after adding zed: the node re-reads the file.
    let with_zed = format!(
        "{original}\n[[users]]\nname = \"zed\"\npassword = \"{}\"\n",
        password_of("zed")
    );
    std::fs::write(&path, &with_zed)?;
    let pid = solo
        .node
        .pid()
        .ok_or_else(|| anyhow::anyhow!("not running"))?;
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()?;
    assert!(ok.success());
    solo.node
        .wait_status(Duration::from_secs(10), "reloaded", |v| {
            v["config_digest"].as_str().is_some_and(|d| d != before)
        })
        .await?;
    assert_eq!(
        register(solo, "zed").await?,
        200,
        "zed registers after SIGHUP"
    );
    let with_zed_digest = digest(solo).await?;

    // A file with an error: nothing changes, the answer names the key and the line.
    std::fs::write(
        &path,
        format!("{with_zed}\n[calls]\nmax_calls = \"many\"\n"),
    )?;
    let (status, body) = solo.node.http_status("POST", "/reload").await?;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("calls.max_calls"), "names the key: {body}");
    assert!(body.contains("line"), "names the line: {body}");
    assert_eq!(digest(solo).await?, with_zed_digest);

    // A change read at start only: refused whole, naming the section.
    std::fs::write(&path, format!("{with_zed}\n[timers]\nt1_ms = 250\n"))?;
    let (status, body) = solo.node.http_status("POST", "/reload").await?;
    assert_eq!(status, 409, "{body}");
    assert!(
        body.contains("[timers]") && body.contains("restart"),
        "{body}"
    );
    assert_eq!(digest(solo).await?, with_zed_digest);
    assert_eq!(register(solo, "zed").await?, 200, "still a user");

    // Back to the original file: zed is gone, with his binding.
    std::fs::write(&path, &original)?;
    let (status, body) = solo.node.http_status("POST", "/reload").await?;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("users -zed"), "{body}");
    assert_eq!(digest(solo).await?, before);
    let aors = solo.node.registered_aors(false).await?;
    if aors.iter().any(|a| a.contains("zed")) {
        bail!("zed's binding outlived his removal: {aors:?}");
    }
    assert_eq!(register(solo, "zed").await?, 403, "zed is no longer a user");
    Ok(())
}
