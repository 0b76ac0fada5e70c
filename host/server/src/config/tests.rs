use super::*;

fn load(text: &str, env: &[(&str, &str)]) -> Result<DaemonConfig, ConfigError> {
    let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    DaemonConfig::load(text, Path::new("guild.toml"), env).map(|(c, _)| c)
}

const TOKEN: &str = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262";

#[test]
fn empty_file_gives_defaults() {
    let config = load("", &[]).expect("loads");
    assert_eq!(config.listen.to_string(), LISTEN_DEFAULT);
    assert_eq!(config.queue.depth_max, QUEUE_DEPTH_MAX_DEFAULT);
    assert_eq!(config.log_format, LogFormat::Json);
}

#[test]
fn environment_overrides_nested_fields_by_name() {
    let text = format!(
        "[[tenants]]\nname = \"alice\"\ntoken_blake3 = \"{TOKEN}\"\ntools = [\"wc\"]\n\n\
         [[tools]]\npath = \"/opt/wc.wasm\"\n[tools.limits]\nfuel_units = 5\n"
    );
    let config = load(
        &text,
        &[
            ("GUILD_LISTEN", "0.0.0.0:9000"),
            ("GUILD_QUEUE__DEPTH_MAX", "7"),
            ("GUILD_TENANTS__ALICE__RATE_PER_SECOND", "2.5"),
            ("GUILD_TOOLS__WC__LIMITS__TIMEOUT_MS", "250"),
            ("GUILD_HOME", "/ignored"),
        ],
    )
    .expect("loads");
    assert_eq!(config.listen.to_string(), "0.0.0.0:9000");
    assert_eq!(config.queue.depth_max, 7);
    assert_eq!(config.tenants[0].rate_per_second, 2.5);
    assert_eq!(config.tools[0].limits.timeout_ms, 250);
    assert_eq!(config.tools[0].limits.fuel_units, 5);
}

#[test]
fn redis_is_one_node_a_cluster_or_a_sentinel_master_and_its_password_comes_from_a_source() {
    let cluster =
        load("", &[("GUILD_REDIS__CLUSTER", r#"["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"]"#)]).expect("valid");
    let settings = cluster.redis.configured().expect("a cluster is configured");
    assert_eq!(settings.cluster.len(), 2);
    assert_eq!(settings.describe(), "cluster via redis://10.0.0.1:7000 (2 seeds)");
    let sentinel = load(
        "[redis.sentinel]\nmaster = \"guild\"\nnodes = [\"redis://10.0.0.1:26379\"]\n",
        &[("GUILD_REDIS__PASSWORD", "env:REDIS_PASSWORD"), ("GUILD_REDIS__USERNAME", "guild")],
    )
    .expect("valid");
    let settings = sentinel.redis.configured().expect("a sentinel master is configured");
    assert_eq!(settings.sentinel.as_ref().map(|s| s.master.as_str()), Some("guild"));
    assert_eq!(settings.password.as_deref(), Some("env:REDIS_PASSWORD"));
    let e = load("[redis]\nurl = \"redis://a:1\"\ncluster = [\"redis://b:2\"]\n", &[]).expect_err("two shapes");
    assert!((e.field.as_str(), e.message.contains("not several")) == ("redis", true), "{e:?}");
    let e = load("[redis]\ncluster = [\"http://b:2\"]\n", &[]).expect_err("not redis");
    assert_eq!(e.field, "redis.cluster");
    let e = load("[redis.sentinel]\nmaster = \"\"\nnodes = [\"redis://a:1\"]\n", &[]).expect_err("no name");
    assert_eq!(e.field, "redis.sentinel.master");
    let e = load("[redis.sentinel]\nmaster = \"m\"\nnodes = []\n", &[]).expect_err("no sentinels");
    assert_eq!(e.field, "redis.sentinel.nodes");
    // A password is never written in the config itself, nor into an address (and an error
    // about one never shows it).
    let e = load("[redis]\nurl = \"redis://a:1\"\npassword = \"hunter2\"\n", &[]).expect_err("literal");
    assert_eq!(e.field, "redis.password");
    assert!(!e.message.contains("hunter2"), "{e:?}");
    for (text, field) in [
        ("[redis]\nurl = \"redis://:hunter2@a:1/0\"\n", "redis.url"),
        ("[redis]\nurl = \"unix:///run/r.sock?pass=hunter2\"\n", "redis.url"),
        ("[redis]\ncluster = [\"redis://u:hunter2@a:1\"]\n", "redis.cluster"),
        ("[redis]\ncluster = [\"http://:hunter2@a:1\"]\n", "redis.cluster"),
        ("[redis.sentinel]\nmaster = \"m\"\nnodes = [\"redis://:hunter2@a:1\"]\n", "redis.sentinel.nodes"),
    ] {
        let e = load(text, &[]).expect_err("a password in an address");
        assert_eq!(e.field, field, "{text}");
        assert!(!e.message.contains("hunter2"), "{e:?}");
    }
    let e = load("[redis]\ncluster = [\"redis://a:7000/3\"]\n", &[]).expect_err("a database in a Cluster");
    assert!(e.field == "redis.cluster" && e.message.contains("database 0"), "{e:?}");
    let e = load("[redis]\nurl = \"redis://a:1\"\ntls_ca_file = \"/ca.pem\"\n", &[]).expect_err("no TLS");
    assert_eq!(e.field, "redis.tls_ca_file");
    let e = load("[redis]\ncluster = []\n", &[]).expect_err("no seeds");
    assert!(e.field == "redis.cluster" && e.message.contains("empty"), "{e:?}");
    let e = load("", &[("GUILD_REDIS__CLUSTER", "[]")]).expect_err("no seeds");
    assert_eq!(e.field, "redis.cluster");
}

#[test]
fn redis_settings_come_from_the_file_or_the_environment_and_are_checked() {
    let config =
        load("[redis]\nurl = \"redis://10.0.0.5:6379/0\"\n", &[("GUILD_REDIS__LEASE_MS", "2000")]).expect("valid");
    let settings = config.redis.configured().expect("a url is set");
    assert_eq!((settings.url.as_deref(), settings.lease_ms), (Some("redis://10.0.0.5:6379/0"), 2000));
    assert_eq!(settings.queue, "default");
    assert!(load("", &[]).expect("valid").redis.configured().is_none(), "no url: runs stay in process");
    let e = load("", &[("GUILD_REDIS__URL", "http://10.0.0.5")]).expect_err("not a redis url");
    assert_eq!(e.field, "redis.url");
    let e = load("", &[("GUILD_REDIS__LEASE_MS", "5")]).expect_err("too short");
    assert_eq!(e.field, "redis.lease_ms");
    let e = load("[redis]\nqueue = \"a{b}\"\n", &[]).expect_err("breaks the hash tag");
    assert_eq!(e.field, "redis.queue");
    let durable = load("", &[("GUILD_REDIS__ACK_DURABILITY", "replica")]).expect("valid");
    assert_eq!(durable.redis.ack_durability, guild_queue::AckDurability::Replica);
    assert_eq!(load("", &[]).expect("valid").redis.ack_durability, guild_queue::AckDurability::Local);
    let aof = load("[redis]\nack_durability = \"aof\"\n", &[]).expect("valid");
    assert_eq!(aof.redis.ack_durability, guild_queue::AckDurability::Aof);
    let e = load("[redis]\nack_durability = \"disk\"\n", &[]).expect_err("not offered");
    assert!(e.message.contains("unknown variant"), "{e:?}");
    let e = load("", &[("GUILD_REDIS__ACK_TIMEOUT_MS", "0")]).expect_err("no time to confirm");
    assert_eq!(e.field, "redis.ack_timeout_ms");
}

#[test]
fn errors_name_the_field() {
    let bad_rate = format!("[[tenants]]\nname = \"a\"\ntoken_blake3 = \"{TOKEN}\"\nrate_per_second = -1\n");
    let e = load(&bad_rate, &[]).expect_err("negative rate");
    assert_eq!(e.field, "tenants[0].rate_per_second");
    let e = load("[[tenants]]\nname = \"a\"\ntoken_blake3 = \"abc\"\n", &[]).expect_err("short digest");
    assert_eq!(e.field, "tenants[0].token_blake3");
    let e = load("[queue]\ndepth_maxx = 3\n", &[]).expect_err("unknown field");
    assert!(e.message.contains("depth_maxx"), "{e}");
    let e = load("", &[("GUILD_QUEUE__RUNS_IN_FLIGHT_MAX", "0")]).expect_err("zero");
    assert_eq!(e.field, "queue.runs_in_flight_max");
    let e = load("[queue]\nruns_in_flight_max = 65\n", &[]).expect_err("more than the engine's pool holds");
    assert_eq!(e.field, "queue.runs_in_flight_max");
    assert!(e.message.contains("at most 64"), "{e}");
    let e = load("[queue]\nruns_committing_max = 0\n", &[]).expect_err("zero");
    assert_eq!(e.field, "queue.runs_committing_max");
    let e = load("[signing]\nleaves_max = 0\n", &[]).expect_err("zero");
    assert_eq!(e.field, "signing.leaves_max");
    let e = load("", &[("GUILD_SIGNING__WAIT_US", "10001")]).expect_err("past the cap");
    assert_eq!(e.field, "signing.wait_us");
    let e = load("", &[("GUILD_SCHEMA_CHECK__FUEL_UNITS", "5")]).expect_err("below the least");
    assert_eq!(e.field, "schema_check.fuel_units");
    let e = load("[schema_check]\nmemory_bytes = 1024\n", &[]).expect_err("below the least");
    assert_eq!(e.field, "schema_check.memory_bytes");
    let config = load("[schema_check]\nfuel_units = 900000000\n", &[("GUILD_SCHEMA_CHECK__FUEL_UNITS_PER_BYTE", "7")])
        .expect("in range");
    assert_eq!(
        (config.schema_check.fuel_units, config.schema_check.fuel_units_per_byte, config.schema_check.memory_bytes),
        (900_000_000, 7, guild_runtime::SCHEMA_CHECK_MEMORY_BYTES_DEFAULT)
    );
    let config = load("[signing]\nwait_us = 500\n", &[]).expect("in range");
    assert_eq!(
        (config.signing.wait_us, config.signing.leaves_max),
        (500, guild_runtime::SIGN_BATCH_LEAVES_MAX_DEFAULT)
    );
    let e = load("", &[("GUILD_TENANTS__BOB__BURST", "3")]).expect_err("no such tenant");
    assert_eq!(e.field, "GUILD_TENANTS__BOB__BURST");
    let e = load("[secrets]\nKEY = \"hunter2\"\n", &[]).expect_err("inline secret value");
    assert_eq!(e.field, "secrets.KEY");
}

#[test]
fn the_example_config_in_deploy_is_valid() {
    let text = include_str!("../../../../deploy/guild.example.toml");
    let config = load(text, &[]).expect("deploy/guild.example.toml loads");
    assert_eq!(config.tenants.len(), 2);
    assert_eq!(config.tools[0].limits.timeout_ms, 2000);
    assert_eq!(config.tools[1].secrets[0].name, "GITHUB_TOKEN");
}

#[test]
fn unknown_guild_variables_are_reported_not_applied() {
    let env = [("GUILD_LISTN".to_string(), "x".to_string())];
    let (_, ignored) = DaemonConfig::load("", Path::new("-"), env).expect("loads");
    assert_eq!(ignored, vec!["GUILD_LISTN".to_string()]);
}

#[test]
fn a_tools_cache_is_a_switch_or_a_table_whose_mistakes_name_the_field() {
    let tool = |cache: &str| format!("[[tools]]\npath = \"/opt/hash.wasm\"\n{cache}\n");
    let on = load(&tool("cache = true"), &[]).expect("loads");
    assert_eq!(on.tools[0].cache.as_ref().and_then(crate::cache::CacheSetting::policy), Some(Default::default()));
    let off = load(&tool("cache = false"), &[]).expect("loads");
    assert_eq!(off.tools[0].cache.as_ref().and_then(crate::cache::CacheSetting::policy), None);
    let table = load(&tool("[tools.cache]\nttl_s = 60\nentries_max = 5"), &[]).expect("loads");
    let policy = table.tools[0].cache.as_ref().and_then(crate::cache::CacheSetting::policy).expect("on");
    assert_eq!((policy.ttl_s, policy.entries_max, policy.bytes_max), (60, 5, crate::cache::CACHE_BYTES_MAX_DEFAULT));
    let misspelt = load(&tool("[tools.cache]\nttl = 60"), &[]).expect_err("refused").to_string();
    assert!(misspelt.contains("unknown field `ttl`"), "{misspelt}");
    let zero = load(&tool("[tools.cache]\nttl_s = 0"), &[]).expect_err("refused");
    assert_eq!(zero.field, "tools[0].cache.ttl_s");
    let sample = load(&tool("[tools.cache]\nverify_sample = 2.0"), &[]).expect_err("refused");
    assert_eq!(sample.field, "tools[0].cache.verify_sample");
    let word = load(&tool("cache = \"yes\""), &[]).expect_err("refused").to_string();
    assert!(word.contains("use true, false, or a table"), "{word}");
    let key = load("[cache]\ntrusted_keys = [\"not a key\"]\n", &[]).expect_err("refused");
    assert_eq!(key.field, "cache.trusted_keys[0]");
}

#[test]
fn priorities_weights_and_needs_are_checked_naming_the_field() {
    let digest = "0".repeat(64);
    let tenant =
        |extra: &str| format!("[[tenants]]\nname = \"a\"\ntoken_blake3 = \"{digest}\"\ntools = [\"*\"]\n{extra}\n");
    let fine = load(&tenant("priority = 2\npriority_max = 9\nweight = 3"), &[]).expect("loads");
    assert_eq!((fine.tenants[0].priority, fine.tenants[0].priority_max, fine.tenants[0].weight), (2, Some(9), 3));
    let defaults = load(&tenant(""), &[]).expect("loads");
    assert_eq!((defaults.tenants[0].priority, defaults.tenants[0].weight), (guild_queue::PRIORITY_DEFAULT, 1));
    for (extra, field) in [
        ("priority = 10", "tenants[0].priority"),
        ("priority = 5\npriority_max = 4", "tenants[0].priority_max"),
        ("weight = 0", "tenants[0].weight"),
        ("weight = 1001", "tenants[0].weight"),
    ] {
        assert_eq!(load(&tenant(extra), &[]).expect_err(extra).field, field);
    }
    let tool = |needs: &str| format!("[[tools]]\npath = \"/opt/x.wasm\"\nneeds = {needs}\n");
    let needs = load(&tool("{ gpu = true, labels = { zone = \"eu\" } }"), &[]).expect("loads");
    assert_eq!(needs.tools[0].needs.lane(), "gpu,label:zone=eu");
    assert_eq!(load(&tool("{ labels = { \"a b\" = \"x\" } }"), &[]).expect_err("bad label").field, "tools[0].needs");
    assert!(load(&tool("{ gpus = 1 }"), &[]).is_err(), "an unknown need is refused");
    let limit = "[[run_limits]]\ntenant = \"a\"\nconcurrency_max = 2\ndelay_ms_max = 1000\n";
    let text = format!("{}{limit}", tenant(""));
    assert_eq!(load(&text, &[]).expect_err("a delay without a rate").field, "run_limits[0].delay_ms_max");
    let comma = load(&tool("{ arch = \"x86_64,gpu\" }"), &[]).expect_err("an arch that could fake a lane");
    assert_eq!(comma.field, "tools[0].needs");
}
