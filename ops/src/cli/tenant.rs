//! `cairn tenant add`: a tenant's own NATS user on the embedded
//! nats-server (run on the cluster's host, as the operator).

use anyhow::Context;

/// `cairn tenant add NAME`: a NATS user for a tenant on the embedded
/// nats-server, which is told to reload.
pub fn add(name: &str, data_dir: &std::path::Path) -> anyhow::Result<i32> {
    let auth = cairn_actors::nats_auth::AuthDir::new(data_dir);
    let users = auth.load().with_context(|| {
        format!(
            "reading the embedded nats-server's users in {} (is this the data dir of a `cairn up` that spawned its own nats-server, and are you its operator?)",
            data_dir.display()
        )
    })?;
    let password = auth
        .add_tenant(name)
        .with_context(|| format!("adding tenant {name}"))?;
    println!(
        "tenant {name}: NATS user {name} (publishes cairn.v1.{name}.<kind>.<verb>, reads its own inboxes and events)"
    );
    println!(
        "  cairn --tenant {name} --nats nats://{name}:{password}@127.0.0.1:{} volume list",
        users.port
    );
    Ok(0)
}
