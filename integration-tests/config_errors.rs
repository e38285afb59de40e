//! A bad configuration stops `check-config` and `run` before anything starts,
//! naming each problem by its key.

use crate::common::{lm_dir, model_dir, World};
use std::process::Command;

fn riskstream(config: &std::path::Path, command: &str) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_riskstream"))
        .args(["--config", config.to_str().unwrap(), command])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout),
    )
}

#[tokio::test]
async fn bad_configs_are_rejected_by_check_config_and_run() {
    let world = World::new("config", 1).await;
    let (ok, text) = riskstream(&world.config_path, "check-config");
    assert!(ok, "the world's own config is valid: {text}");

    let base = world.config_text(1, "");
    let cases = [
        (
            "unknown key",
            base.replace("[postgres]", "[postgres]\npool_size = 3"),
            "pool_size",
        ),
        (
            "review above decline",
            base.replace("review = 0.5", "review = 0.95"),
            "thresholds.review",
        ),
        (
            "missing model",
            base.replace(&model_dir().display().to_string(), "/nonexistent/model"),
            "model.dir",
        ),
        (
            "missing language model",
            base.replace(&lm_dir().display().to_string(), "/nonexistent/lm"),
            "language_model.dir",
        ),
        (
            "a rule naming a feature the model does not have",
            base.clone()
                + "[[rules.rule]]\nname = \"r\"\nwhen = \"card_count_2d > 3.0\"\naction = \"review\"\n",
            "rules.rule[0].when: unknown name `card_count_2d`",
        ),
        (
            "a rule with an unknown action",
            base.clone()
                + "[[rules.rule]]\nname = \"r\"\nwhen = \"amount > 3.0\"\naction = \"block\"\n",
            "rules.rule[0].action",
        ),
    ];
    for (what, text, key) in cases {
        let path = world.dir.path().join("bad.toml");
        std::fs::write(&path, text).unwrap();
        for command in ["check-config", "run"] {
            let (ok, out) = riskstream(&path, command);
            assert!(!ok, "{what}: `{command}` must fail");
            assert!(
                out.contains(key),
                "{what}: `{command}` must name {key:?}, said:\n{out}"
            );
        }
    }

    // A model whose bytes do not match its manifest fails at startup too.
    let tampered = world.dir.path().join("tampered");
    std::fs::create_dir(&tampered).unwrap();
    std::fs::copy(
        model_dir().join("manifest.json"),
        tampered.join("manifest.json"),
    )
    .unwrap();
    let mut bytes = std::fs::read(model_dir().join("model.onnx")).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(tampered.join("model.onnx"), bytes).unwrap();
    let path = world.dir.path().join("tampered.toml");
    std::fs::write(
        &path,
        base.replace(
            &model_dir().display().to_string(),
            &tampered.display().to_string(),
        ),
    )
    .unwrap();
    let (ok, out) = riskstream(&path, "check-config");
    assert!(
        !ok && out.contains("sha256"),
        "a tampered model is refused: {out}"
    );

    // So does a tampered language model, named by its key.
    let tampered_lm = world.dir.path().join("tampered-lm");
    std::fs::create_dir(&tampered_lm).unwrap();
    for file in ["manifest.json", "vocab.json", "golden.json"] {
        std::fs::copy(lm_dir().join(file), tampered_lm.join(file)).unwrap();
    }
    let mut bytes = std::fs::read(lm_dir().join("model.onnx")).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(tampered_lm.join("model.onnx"), bytes).unwrap();
    let path = world.dir.path().join("tampered-lm.toml");
    std::fs::write(
        &path,
        base.replace(
            &lm_dir().display().to_string(),
            &tampered_lm.display().to_string(),
        ),
    )
    .unwrap();
    for command in ["check-config", "run"] {
        let (ok, out) = riskstream(&path, command);
        assert!(
            !ok && out.contains("language_model.dir") && out.contains("sha256"),
            "`{command}` refuses a tampered language model by its key: {out}"
        );
    }
    world.tear_down().await;
}
