//! The fraud models in force: the champion (`[model]`) decides, the shadow
//! (`[shadow]`), when configured, is scored beside it and stored in
//! `shadow_decisions`. Opening one runs every check of start-up (sha256, the
//! engine's IO contract, `golden.json`) and records it in `model_versions`;
//! a model that fails any of them is refused by name.

use crate::config::{Config, ModelConfig};
use crate::scoring::Scorer;
use crate::sink;
use sqlx::PgPool;
use std::sync::Arc;

pub(super) struct Models {
    pub(super) champion: Arc<Scorer>,
    pub(super) shadow: Option<Arc<Scorer>>,
    /// What they were opened from, to tell what a changed config changes.
    champion_config: ModelConfig,
    shadow_config: Option<ModelConfig>,
}

impl Models {
    /// Open the models `config` names. With `current`, a model whose section
    /// did not change is kept as it is, not opened again. Errors name the
    /// section (`model.dir: …`, `shadow.dir: …`).
    pub(super) async fn open(
        config: &Config,
        pool: &PgPool,
        current: Option<&Models>,
    ) -> Result<Models, String> {
        let workers = config.pipeline.scoring_workers;
        let champion = match current.filter(|c| c.champion_config == config.model) {
            Some(c) => c.champion.clone(),
            None => open_one("model", &config.model, workers, pool).await?,
        };
        let shadow = match &config.shadow {
            None => None,
            Some(s) => match current.filter(|c| c.shadow_config.as_ref() == Some(s)) {
                Some(c) => c.shadow.clone(),
                // One session: the shadow must not take the champion's cores.
                None => Some(open_one("shadow", s, 1, pool).await?),
            },
        };
        Ok(Models {
            champion,
            shadow,
            champion_config: config.model.clone(),
            shadow_config: config.shadow.clone(),
        })
    }

    /// `[model]` or `[shadow]` differ from what these were opened from.
    pub(super) fn differ_from(&self, config: &Config) -> bool {
        self.champion_config != config.model || self.shadow_config != config.shadow
    }

    pub(super) fn describe(&self) -> String {
        let name = |s: &Scorer| {
            format!(
                "{} v{} ({})",
                s.manifest.name,
                s.manifest.version,
                &s.manifest.sha256[..12]
            )
        };
        match &self.shadow {
            None => format!("champion {}", name(&self.champion)),
            Some(s) => format!("champion {}, shadow {}", name(&self.champion), name(s)),
        }
    }
}

async fn open_one(
    section: &str,
    m: &ModelConfig,
    workers: usize,
    pool: &PgPool,
) -> Result<Arc<Scorer>, String> {
    let (dir, intra, max_batch) = (m.dir.clone(), m.intra_threads, m.max_batch);
    let scorer = tokio::task::spawn_blocking(move || Scorer::open(&dir, workers, intra, max_batch))
        .await
        .map_err(|e| format!("{section}.dir: {e}"))?
        .map_err(|e| format!("{section}.dir: {e}"))?;
    sink::register_model(pool, &scorer.manifest)
        .await
        .map_err(|e| format!("{section}: cannot record it in model_versions: {e}"))?;
    Ok(Arc::new(scorer))
}
