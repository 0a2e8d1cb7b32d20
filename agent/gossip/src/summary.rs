//! The typed node summary and its encoding into chitchat keys.
//!
//! Each section of a [`NodeSummary`] is one chitchat key holding compact JSON, so a change of
//! load re-sends only the load key. Keys start with `g:`; a reader decodes the sections it
//! knows and ignores every other key and every unknown JSON field, so nodes running a newer
//! schema (more keys, more fields) are read, not refused. A section that does not decode (a
//! newer schema that changed its type) is left at its default.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tracing::debug;

use super::error::GossipError;

/// Version of the summary schema this build writes.
pub const SCHEMA_VERSION: u32 = 1;

/// Prefix of every key this module writes.
pub(crate) const KEY_PREFIX: &str = "g:";
const KEY_SCHEMA: &str = "g:schema";
const KEY_SITE: &str = "g:site";
const KEY_ADDR: &str = "g:addr";
const KEY_CAPACITY: &str = "g:cap";
const KEY_LOAD: &str = "g:load";
const KEY_FORECAST: &str = "g:fcst";
const KEY_TRIGGER: &str = "g:trig";
const KEY_SERVICES: &str = "g:svc";
const KEY_IMAGES: &str = "g:img";
const KEY_ENERGY: &str = "g:energy";
const KEY_RISK: &str = "g:risk";
const KEY_SWITCH: &str = "g:switch";
const KEY_COORD: &str = "g:coord";

/// What chitchat spends on a key besides its key and value strings (version, status and
/// length prefixes), counted against the budget.
pub(crate) const PER_KEY_OVERHEAD: usize = 16;
/// Past switch latencies kept in a summary (the most recent).
pub const MAX_SWITCH_LATENCIES: usize = 16;

/// Addresses of a node's other endpoints (the gossip address is in [`super::Member`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Addresses {
    /// QUIC endpoint for commands and migrations.
    pub quic: Option<SocketAddr>,
    /// HTTP API.
    pub api: Option<SocketAddr>,
}

/// What a node offers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Capacity {
    /// Logical CPUs.
    pub cpu_cores: f64,
    /// Memory, bytes.
    pub memory_bytes: u64,
    /// Network, bytes per second.
    pub network_bytes_per_sec: u64,
    /// Disk for state and images, bytes.
    pub disk_bytes: u64,
}

/// Load now, as fractions of capacity (0..=1) and a dirty-page rate.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Load {
    /// CPU utilisation.
    pub cpu: f64,
    /// Memory utilisation.
    pub memory: f64,
    /// Network utilisation.
    pub network: f64,
    /// Bytes dirtied per second.
    pub dirty_bytes_per_sec: f64,
}

/// A utilisation forecast.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Forecast {
    /// Horizon, seconds ahead.
    pub horizon_secs: u32,
    /// Highest forecast utilisation over the horizon.
    pub u_max: f64,
    /// Lower bound of its prediction interval.
    pub lower: f64,
    /// Upper bound of its prediction interval.
    pub upper: f64,
}

/// The trigger's state on this node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TriggerState {
    /// The trigger fired and has not re-armed.
    pub fired: bool,
    /// Unix time (seconds) it fired.
    pub since_unix: Option<u64>,
    /// Short reason, e.g. "cpu k-of-n".
    pub reason: String,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

/// A service this node hosts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HostedService {
    /// Service id.
    #[serde(rename = "i")]
    pub id: String,
    /// Declared state size, bytes.
    #[serde(rename = "s")]
    pub state_bytes: u64,
    /// Image id.
    #[serde(rename = "m")]
    pub image: String,
    /// The image's size, bytes (0: no image, or not known).
    #[serde(rename = "b")]
    pub image_bytes: u64,
    /// CPU it uses now, cores.
    #[serde(rename = "c")]
    pub cpu_cores: f64,
    /// Cores' worth of time it was runnable without a CPU (throttled by the node's share, or
    /// contended): enough of it marks its node as held at its share; it is no demand. Left
    /// out while 0, so a summary without it reads the same.
    #[serde(rename = "w", skip_serializing_if = "is_zero")]
    pub cpu_wait_cores: f64,
    /// Memory charged to it now, bytes.
    #[serde(rename = "r")]
    pub memory_bytes: u64,
    /// Bytes it dirties per second.
    #[serde(rename = "d")]
    pub dirty_bytes_per_sec: f64,
    /// Its own stop time as measured here, seconds (0: never measured).
    #[serde(rename = "t")]
    pub stop_s: f64,
}

/// Power drawn and where the figure came from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Energy {
    /// Watts.
    pub power_watts: f64,
    /// Source of the figure: "rapl", "model", "none".
    pub source: String,
    /// The site's power budget this node is configured with (0: none configured).
    pub site_budget_watts: f64,
    /// The node's own power at full load, watts (its share of a site without a budget).
    pub max_watts: f64,
}

/// What a node tells the cluster about itself. Identity and generation are the member's
/// ([`super::MemberId`]), the gossip address is [`super::Member::gossip_addr`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeSummary {
    /// Schema version the node wrote (set when read; [`SCHEMA_VERSION`] is written).
    pub schema: u32,
    /// Site the node belongs to.
    pub site: String,
    /// QUIC and API addresses.
    pub addresses: Addresses,
    /// Capacity per resource.
    pub capacity: Capacity,
    /// Load now.
    pub load: Load,
    /// Forecast, once there is one.
    pub forecast: Option<Forecast>,
    /// Trigger state, once there is one.
    pub trigger: Option<TriggerState>,
    /// Hosted services; over budget, the largest by state are kept.
    pub services: Vec<HostedService>,
    /// Services left out to fit the budget.
    pub services_dropped: u32,
    /// Image ids held locally.
    pub images: Vec<String>,
    /// Images left out to fit the budget.
    pub images_dropped: u32,
    /// Power.
    pub energy: Energy,
    /// Operator risk level, 0..=1.
    pub risk: f64,
    /// Latencies of past transitional switches, milliseconds, oldest first.
    pub switch_latencies_ms: Vec<u32>,
    /// The coordinator this node knows, when it is a member of the group.
    pub coordinator: Option<CoordinatorSeen>,
}

/// The leader and term a node knows (announced so that every node knows them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoordinatorSeen {
    /// The leader's node name, if one is known.
    pub leader: Option<String>,
    /// Its transport address.
    pub leader_addr: Option<String>,
    /// The Raft term.
    pub term: u64,
}

#[derive(Serialize, Deserialize, Default)]
#[serde(default)]
struct ServicesSection {
    #[serde(rename = "l")]
    list: Vec<HostedService>,
    #[serde(rename = "d")]
    dropped: u32,
}

#[derive(Serialize, Deserialize, Default)]
#[serde(default)]
struct ImagesSection {
    #[serde(rename = "l")]
    list: Vec<String>,
    #[serde(rename = "d")]
    dropped: u32,
}

/// The outcome of encoding a summary within a budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedSummary {
    pub(crate) keys: Vec<(String, String)>,
    /// Bytes the summary takes in gossip state (keys, values and per-key overhead).
    pub bytes: usize,
    /// Services left out to fit.
    pub services_dropped: usize,
    /// Images left out to fit.
    pub images_dropped: usize,
}

fn cost(keys: &[(String, String)]) -> usize {
    keys.iter()
        .map(|(k, v)| k.len() + v.len() + PER_KEY_OVERHEAD)
        .sum()
}

fn json<T: Serialize>(value: &T) -> Result<String, GossipError> {
    Ok(serde_json::to_string(value)?)
}

/// Encoded length of a JSON array of items whose encoded lengths are given.
fn array_len(item_lens: &[usize]) -> usize {
    2 + item_lens.iter().sum::<usize>() + item_lens.len().saturating_sub(1)
}

impl NodeSummary {
    /// Encodes the summary into chitchat keys within `budget` bytes.
    ///
    /// Over budget, services are sorted by state size (largest first) and images kept in
    /// order, and the tail of whichever list is larger is cut until the summary fits; the
    /// number cut is published (`services_dropped`, `images_dropped`, added to any count the
    /// caller already set). Only the most recent [`MAX_SWITCH_LATENCIES`] latencies are sent.
    pub fn encode(&self, budget: usize) -> Result<EncodedSummary, GossipError> {
        let mut services = self.services.clone();
        services.sort_by(|a, b| b.state_bytes.cmp(&a.state_bytes).then(a.id.cmp(&b.id)));
        let service_lens = services
            .iter()
            .map(|s| json(s).map(|j| j.len()))
            .collect::<Result<Vec<_>, _>>()?;
        let image_lens = self
            .images
            .iter()
            .map(|i| json(i).map(|j| j.len()))
            .collect::<Result<Vec<_>, _>>()?;
        let latencies = &self.switch_latencies_ms[self
            .switch_latencies_ms
            .len()
            .saturating_sub(MAX_SWITCH_LATENCIES)..];

        let mut fixed: Vec<(String, String)> = vec![
            (KEY_SCHEMA.into(), SCHEMA_VERSION.to_string()),
            (KEY_SITE.into(), json(&self.site)?),
            (KEY_ADDR.into(), json(&self.addresses)?),
            (KEY_CAPACITY.into(), json(&self.capacity)?),
            (KEY_LOAD.into(), json(&self.load)?),
            (KEY_FORECAST.into(), json(&self.forecast)?),
            (KEY_TRIGGER.into(), json(&self.trigger)?),
            (KEY_ENERGY.into(), json(&self.energy)?),
            (KEY_RISK.into(), json(&self.risk)?),
            (KEY_SWITCH.into(), json(&latencies)?),
            (KEY_COORD.into(), json(&self.coordinator)?),
        ];

        // Sizes of the two list sections as functions of how many items are kept; the
        // dropped count is bounded by the full length, so reserve its digits up front.
        let count_digits = |n: usize| n.to_string().len();
        let section_len = |lens: &[usize], total: usize, prior: u32| {
            // {"l":[...],"d":N}
            11 + array_len(lens) + count_digits(total + prior as usize)
        };
        let fixed_cost =
            cost(&fixed) + KEY_SERVICES.len() + KEY_IMAGES.len() + 2 * PER_KEY_OVERHEAD;
        let mut keep_services = services.len();
        let mut keep_images = self.images.len();
        let total = |ks: usize, ki: usize| {
            fixed_cost
                + section_len(&service_lens[..ks], services.len(), self.services_dropped)
                + section_len(&image_lens[..ki], self.images.len(), self.images_dropped)
        };
        while total(keep_services, keep_images) > budget {
            let services_len = array_len(&service_lens[..keep_services]);
            let images_len = array_len(&image_lens[..keep_images]);
            if keep_services > 0 && (services_len >= images_len || keep_images == 0) {
                keep_services -= 1;
            } else if keep_images > 0 {
                keep_images -= 1;
            } else {
                return Err(GossipError::SummaryTooLarge {
                    bytes: total(0, 0),
                    budget,
                });
            }
        }
        let services_dropped = services.len() - keep_services;
        let images_dropped = self.images.len() - keep_images;
        services.truncate(keep_services);
        let saturate =
            |n: usize, prior: u32| u32::try_from(n).unwrap_or(u32::MAX).saturating_add(prior);
        fixed.push((
            KEY_SERVICES.into(),
            json(&ServicesSection {
                list: services,
                dropped: saturate(services_dropped, self.services_dropped),
            })?,
        ));
        fixed.push((
            KEY_IMAGES.into(),
            json(&ImagesSection {
                list: self.images[..keep_images].to_vec(),
                dropped: saturate(images_dropped, self.images_dropped),
            })?,
        ));
        let bytes = cost(&fixed);
        debug_assert!(bytes <= budget, "{bytes} > {budget}");
        Ok(EncodedSummary {
            keys: fixed,
            bytes,
            services_dropped,
            images_dropped,
        })
    }

    /// Decodes a summary from a node's key-values; `None` if the node published none.
    /// Unknown keys and fields are ignored; a section that does not parse stays default.
    pub(crate) fn decode<'a>(key_values: impl Iterator<Item = (&'a str, &'a str)>) -> Option<Self> {
        let keys: BTreeMap<&str, &str> = key_values
            .filter(|(k, _)| k.starts_with(KEY_PREFIX))
            .collect();
        let schema: u32 = keys.get(KEY_SCHEMA)?.trim().parse().ok()?;
        fn section<T: DeserializeOwned + Default>(keys: &BTreeMap<&str, &str>, key: &str) -> T {
            match keys.get(key) {
                Some(value) => serde_json::from_str(value).unwrap_or_else(|err| {
                    debug!(key, error = %err, "ignoring a summary section that does not decode");
                    T::default()
                }),
                None => T::default(),
            }
        }
        let services: ServicesSection = section(&keys, KEY_SERVICES);
        let images: ImagesSection = section(&keys, KEY_IMAGES);
        Some(NodeSummary {
            schema,
            site: section(&keys, KEY_SITE),
            addresses: section(&keys, KEY_ADDR),
            capacity: section(&keys, KEY_CAPACITY),
            load: section(&keys, KEY_LOAD),
            forecast: section(&keys, KEY_FORECAST),
            trigger: section(&keys, KEY_TRIGGER),
            services: services.list,
            services_dropped: services.dropped,
            images: images.list,
            images_dropped: images.dropped,
            energy: section(&keys, KEY_ENERGY),
            risk: section(&keys, KEY_RISK),
            switch_latencies_ms: section(&keys, KEY_SWITCH),
            coordinator: section(&keys, KEY_COORD),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn sample(site: &str) -> NodeSummary {
        NodeSummary {
            schema: SCHEMA_VERSION,
            site: site.into(),
            addresses: Addresses {
                quic: Some("10.0.0.1:7001".parse().unwrap()),
                api: Some("10.0.0.1:7002".parse().unwrap()),
            },
            capacity: Capacity {
                cpu_cores: 8.0,
                memory_bytes: 16 << 30,
                network_bytes_per_sec: 125_000_000,
                disk_bytes: 500 << 30,
            },
            load: Load {
                cpu: 0.42,
                memory: 0.5,
                network: 0.1,
                dirty_bytes_per_sec: 1.5e6,
            },
            forecast: Some(Forecast {
                horizon_secs: 30,
                u_max: 0.8,
                lower: 0.6,
                upper: 0.95,
            }),
            trigger: Some(TriggerState {
                fired: false,
                since_unix: None,
                reason: String::new(),
            }),
            services: vec![HostedService {
                id: "redis".into(),
                state_bytes: 1 << 30,
                image: "sha256:abc".into(),
                ..HostedService::default()
            }],
            services_dropped: 0,
            images: vec!["sha256:abc".into()],
            images_dropped: 0,
            energy: Energy {
                power_watts: 95.0,
                source: "model".into(),
                ..Energy::default()
            },
            risk: 0.1,
            switch_latencies_ms: vec![120, 90],
            coordinator: Some(CoordinatorSeen {
                leader: Some("n1".into()),
                leader_addr: Some("10.0.0.1:7001".into()),
                term: 3,
            }),
        }
    }

    fn round_trip(summary: &NodeSummary, budget: usize) -> NodeSummary {
        let encoded = summary.encode(budget).unwrap();
        NodeSummary::decode(encoded.keys.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap()
    }

    #[test]
    fn round_trips_within_budget() {
        let s = sample("lab");
        assert_eq!(round_trip(&s, 4096), s);
        assert!(s.encode(4096).unwrap().bytes < 1024);
    }

    #[test]
    fn many_services_are_cut_to_the_budget_largest_first() {
        let mut s = sample("lab");
        s.services = (0..2000u64)
            .map(|i| HostedService {
                id: format!("service-{i:04}"),
                state_bytes: i * 1000,
                image: format!("sha256:{i:064x}"),
                ..HostedService::default()
            })
            .collect();
        s.images = (0..300u64).map(|i| format!("sha256:{i:064x}")).collect();
        let budget = 4096;
        let encoded = s.encode(budget).unwrap();
        assert!(encoded.bytes <= budget, "{} > {budget}", encoded.bytes);
        assert!(
            encoded.bytes > budget - 200,
            "the budget is used: {}",
            encoded.bytes
        );
        assert!(encoded.services_dropped > 1900);
        let decoded = round_trip(&s, budget);
        assert_eq!(
            decoded.services.len() + decoded.services_dropped as usize,
            2000
        );
        assert_eq!(decoded.images.len() + decoded.images_dropped as usize, 300);
        assert!(!decoded.services.is_empty() && !decoded.images.is_empty());
        // The largest services are the ones kept.
        assert_eq!(decoded.services[0].id, "service-1999");
        let smallest_kept = decoded.services.last().unwrap().state_bytes;
        assert!(smallest_kept >= (2000 - decoded.services.len() as u64) * 1000);
    }

    #[test]
    fn too_large_without_lists_is_an_error() {
        let mut s = sample("x".repeat(5000).as_str());
        s.services.clear();
        assert!(matches!(
            s.encode(4096),
            Err(GossipError::SummaryTooLarge { .. })
        ));
    }

    #[test]
    fn newer_schema_keys_and_fields_are_ignored() {
        let s = sample("lab");
        let encoded = s.encode(4096).unwrap();
        let mut keys: Vec<(String, String)> = encoded
            .keys
            .iter()
            .map(|(k, v)| {
                let v = match k.as_str() {
                    KEY_SCHEMA => "7".to_string(),
                    KEY_LOAD => v.replacen('{', r#"{"gpu":0.9,"psi":{"some":1},"#, 1),
                    _ => v.clone(),
                };
                (k.clone(), v)
            })
            .collect();
        keys.push(("g:gpu".into(), r#"{"cards":4}"#.into()));
        keys.push(("g:v2:everything".into(), "not json at all".into()));
        keys.push(("quickwit:other".into(), "x".into()));
        // A newer schema changed a known section's type: it falls back to the default.
        keys.retain(|(k, _)| k != KEY_RISK);
        keys.push((KEY_RISK.into(), r#"{"level":"high"}"#.into()));
        let decoded =
            NodeSummary::decode(keys.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap();
        assert_eq!(decoded.schema, 7);
        assert_eq!(decoded.load, s.load);
        assert_eq!(decoded.services, s.services);
        assert_eq!(decoded.risk, 0.0);
        assert_eq!(
            NodeSummary {
                schema: 1,
                risk: s.risk,
                ..decoded
            },
            s
        );
    }

    #[test]
    fn no_schema_key_means_no_summary() {
        assert!(NodeSummary::decode([("g:site", "\"a\"")].into_iter()).is_none());
        assert!(NodeSummary::decode([("g:schema", "x")].into_iter()).is_none());
    }

    proptest! {
        #[test]
        fn encoding_never_exceeds_the_budget(
            n_services in 0usize..400,
            n_images in 0usize..200,
            id_len in 1usize..60,
            budget in 1024usize..8192,
        ) {
            let mut s = sample("site");
            s.services = (0..n_services).map(|i| HostedService {
                id: "s".repeat(id_len) + &i.to_string(),
                state_bytes: (i as u64 * 7919) % 100_000,
                image: "i".repeat(id_len),
                ..HostedService::default()
            }).collect();
            s.images = (0..n_images).map(|i| format!("{}{i}", "m".repeat(id_len))).collect();
            let encoded = s.encode(budget).unwrap();
            prop_assert!(encoded.bytes <= budget);
            let decoded = round_trip(&s, budget);
            prop_assert_eq!(decoded.services.len() + decoded.services_dropped as usize, n_services);
            prop_assert_eq!(decoded.images.len() + decoded.images_dropped as usize, n_images);
        }
    }
}
