//! Thresholds: a score and a transaction's channel give the decision the
//! model alone would make.

use super::Decision;
use crate::config::{ThresholdConfig, Thresholds};
use crate::event::Channel;

/// The configured thresholds, with their per-channel overrides.
#[derive(Debug, Clone, PartialEq)]
pub struct ThresholdSet {
    pub config: ThresholdConfig,
}

impl ThresholdSet {
    pub fn new(config: ThresholdConfig) -> Self {
        ThresholdSet { config }
    }

    /// Thresholds for a channel: its override if any, else the defaults.
    pub fn for_channel(&self, channel: Option<Channel>) -> Thresholds {
        channel
            .and_then(|c| self.config.channel.get(c.as_str()))
            .cloned()
            .unwrap_or(Thresholds {
                review: self.config.review,
                decline: self.config.decline,
            })
    }

    /// A score at or above a threshold takes that action; decline wins.
    pub fn decide(&self, score: f32, channel: Option<Channel>) -> Decision {
        let t = self.for_channel(channel);
        if score >= t.decline {
            Decision::Decline
        } else if score >= t.review {
            Decision::Review
        } else {
            Decision::Approve
        }
    }

    /// The thresholds as stored in `threshold_sets` (who changed them is not
    /// part of what they are).
    pub fn canonical_json(&self) -> serde_json::Value {
        serde_json::json!({
            "review": self.config.review,
            "decline": self.config.decline,
            "channel": self.config.channel,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn set() -> ThresholdSet {
        let mut channel = BTreeMap::new();
        channel.insert(
            "ecom".to_string(),
            Thresholds {
                review: 0.3,
                decline: 0.6,
            },
        );
        ThresholdSet::new(ThresholdConfig {
            review: 0.5,
            decline: 0.9,
            changed_by: "ops".into(),
            channel,
        })
    }

    #[test]
    fn thresholds_are_inclusive_and_channel_overrides_apply() {
        let s = set();
        assert_eq!(s.decide(0.49, Some(Channel::Pos)), Decision::Approve);
        assert_eq!(s.decide(0.5, Some(Channel::Pos)), Decision::Review);
        assert_eq!(s.decide(0.9, None), Decision::Decline);
        assert_eq!(s.decide(0.35, Some(Channel::Ecom)), Decision::Review);
        assert_eq!(s.decide(0.6, Some(Channel::Ecom)), Decision::Decline);
    }
}
