//! The admin API against its description (`docs/openapi.json`): a node with a registered
//! phone, a call up and a trunk answers every path and method the file lists with a status
//! the file lists, and every JSON body has the properties, types and values the file says.
//! Other methods on those paths get 405, and a path not in the file 404.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use sip_tests::cluster::Solo;
use sip_tests::{Answer, Ua};

/// Where `value` breaks `schema` (the subset of OpenAPI 3.0 schemas the file uses: `$ref`,
/// `type`, `nullable`, `enum`, `required`, `properties`, `items`).
fn check(spec: &Value, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.rsplit('/').next().unwrap_or_default();
        return check(
            spec,
            &spec["components"]["schemas"][name],
            value,
            at,
            errors,
        );
    }
    if value.is_null() {
        if schema["nullable"] != true && schema.get("type").is_some() {
            errors.push(format!("{at}: null, not nullable"));
        }
        return;
    }
    let ok = match schema["type"].as_str() {
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        _ => true,
    };
    if !ok {
        errors.push(format!("{at}: {value} is not {}", schema["type"]));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        errors.push(format!("{at}: {value} not in {allowed:?}"));
    }
    for key in schema["required"].as_array().into_iter().flatten() {
        let key = key.as_str().unwrap_or_default();
        if value.get(key).is_none() {
            errors.push(format!("{at}: required `{key}` missing"));
        }
    }
    if let Some(props) = schema["properties"].as_object() {
        for (k, s) in props {
            if let Some(v) = value.get(k) {
                check(spec, s, v, &format!("{at}.{k}"), errors);
            }
        }
    }
    if let Some(items) = value.as_array() {
        for (i, v) in items.iter().enumerate() {
            check(spec, &schema["items"], v, &format!("{at}[{i}]"), errors);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_matches_its_openapi_description() -> Result<()> {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json"),
    )?;
    let spec: Value = serde_json::from_str(&text).context("docs/openapi.json")?;
    let extra = "\n[[trunks]]\nname = \"carrier\"\naddress = \"127.0.0.79\"\nprefixes = [\"0\"]\n";
    let solo = Solo::start(&["alice", "bob"], extra).await?;
    let node = &solo.node;
    let [mut alice, bob]: [Ua; 2] = solo
        .registered(&["alice", "bob"])
        .await?
        .try_into()
        .map_err(|_| anyhow::anyhow!("two phones"))?;
    bob.answer_next_invite(Answer::ok());
    let a = alice.call("bob").await?;
    node.wait_json(
        Duration::from_secs(5),
        "/calls",
        "the call confirmed",
        |v| v["calls"][0]["state"] == "confirmed",
    )
    .await?;

    let paths = spec["paths"].as_object().context("paths")?;
    let mut errors = Vec::new();
    let mut checked = 0;
    for (path, ops) in paths {
        let ops = ops.as_object().context("operations")?;
        for method in ["get", "post", "put", "delete"] {
            let (status, body) = node.http_status(&method.to_uppercase(), path).await?;
            let Some(op) = ops.get(method) else {
                if status != 405 {
                    errors.push(format!("{method} {path}: {status}, not 405"));
                }
                continue;
            };
            let Some(resp) = op["responses"].get(status.to_string()) else {
                errors.push(format!(
                    "{method} {path}: status {status} is not in the file"
                ));
                continue;
            };
            checked += 1;
            let schema = &resp["content"]["application/json"]["schema"];
            if schema.is_null() {
                continue;
            }
            match serde_json::from_str::<Value>(&body) {
                Ok(v) => check(&spec, schema, &v, &format!("{method} {path}"), &mut errors),
                Err(e) => errors.push(format!("{method} {path}: not JSON ({e}): {body}")),
            }
        }
    }
    // `/calls` pages: `total` counts every call, `offset`/`limit` choose the page.
    for (query, listed) in [
        ("", 1),
        ("?limit=0", 0),
        ("?offset=1", 0),
        ("?offset=0&limit=1", 1),
    ] {
        let v = node.get_json(&format!("/calls{query}")).await?;
        if v["total"] != 1 || v["calls"].as_array().map(Vec::len) != Some(listed) {
            errors.push(format!("GET /calls{query}: {v}"));
        }
    }
    let (status, _) = node.http_status("GET", "/no/such/path").await?;
    if status != 404 {
        errors.push(format!("GET /no/such/path: {status}, not 404"));
    }
    if !errors.is_empty() {
        bail!(
            "the admin API does not match docs/openapi.json:\n{}",
            errors.join("\n")
        );
    }
    ensure!(checked >= 9, "only {checked} operations answered");
    ensure!(alice.bye(&a).await?.status == 200, "BYE");
    Ok(())
}
