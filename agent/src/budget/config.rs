//! The budget's limits (`--max-cpu`, `--max-memory`) and their validation.

/// A limit, or none.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Limit<T> {
    Off,
    At(T),
}

impl<T: Copy> Limit<T> {
    #[must_use]
    pub fn is_on(&self) -> bool {
        matches!(self, Self::At(_))
    }

    #[must_use]
    pub fn value(&self) -> Option<T> {
        match self {
            Self::Off => None,
            Self::At(v) => Some(*v),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BudgetError {
    #[error("--max-cpu: {0} is not a number of cores above 0.01 (e.g. 0.5, 2) or `off`")]
    Cpu(String),
    #[error("--max-memory: {0} is not a size of at least 32M (e.g. 256M, 1G) or `off`")]
    Memory(String),
}

/// The budget: CPU in cores (1.0 = one core's time per second), memory in bytes (resident).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetConfig {
    pub max_cpu: Limit<f64>,
    pub max_memory: Limit<u64>,
}

/// The least memory budget accepted: the agent's own floor (programs, tables, buffers) is about
/// 20 MB.
const MIN_MEMORY: u64 = 32 << 20;
const MIN_CPU: f64 = 0.01;

impl BudgetConfig {
    /// The limits are sane: a budget below what the agent needs to run at all would shed
    /// everything.
    pub fn validate(&self) -> Result<(), BudgetError> {
        if let Limit::At(cores) = self.max_cpu
            && !(cores.is_finite() && (MIN_CPU..=4096.0).contains(&cores))
        {
            return Err(BudgetError::Cpu(cores.to_string()));
        }
        if let Limit::At(bytes) = self.max_memory
            && bytes < MIN_MEMORY
        {
            return Err(BudgetError::Memory(bytes.to_string()));
        }
        Ok(())
    }

    /// How far over budget `cores` and `rss_bytes` are: 1.0 at the limit, the larger of the
    /// two; 0 when no limit is set.
    #[must_use]
    pub fn pressure(&self, cores: f64, rss_bytes: u64) -> f64 {
        let cpu = self.max_cpu.value().map_or(0.0, |max| cores / max);
        let memory = self
            .max_memory
            .value()
            .map_or(0.0, |max| rss_bytes as f64 / max as f64);
        cpu.max(memory)
    }
}

/// `--max-cpu`: `off`, or cores as a decimal number.
pub fn parse_cpu(text: &str) -> Result<Limit<f64>, BudgetError> {
    if text.eq_ignore_ascii_case("off") {
        return Ok(Limit::Off);
    }
    let cores: f64 = text.parse().map_err(|_| BudgetError::Cpu(text.into()))?;
    let limit = Limit::At(cores);
    BudgetConfig {
        max_cpu: limit,
        max_memory: Limit::Off,
    }
    .validate()?;
    Ok(limit)
}

/// `--max-memory`: `off`, or bytes with an optional binary suffix (`K`, `M`, `G`).
pub fn parse_memory(text: &str) -> Result<Limit<u64>, BudgetError> {
    if text.eq_ignore_ascii_case("off") {
        return Ok(Limit::Off);
    }
    let err = || BudgetError::Memory(text.into());
    let (digits, shift) = match text.as_bytes().last() {
        Some(b'K' | b'k') => (&text[..text.len() - 1], 10),
        Some(b'M' | b'm') => (&text[..text.len() - 1], 20),
        Some(b'G' | b'g') => (&text[..text.len() - 1], 30),
        _ => (text, 0),
    };
    let n: u64 = digits.parse().map_err(|_| err())?;
    let bytes = n.checked_mul(1 << shift).ok_or_else(err)?;
    if bytes < MIN_MEMORY {
        return Err(err());
    }
    Ok(Limit::At(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_and_bad_ones_name_the_flag() {
        assert_eq!(parse_cpu("0.5"), Ok(Limit::At(0.5)));
        assert_eq!(parse_cpu("OFF"), Ok(Limit::Off));
        assert_eq!(parse_memory("256M"), Ok(Limit::At(256 << 20)));
        assert_eq!(parse_memory("1G"), Ok(Limit::At(1 << 30)));
        assert_eq!(parse_memory("off"), Ok(Limit::Off));
        for bad in ["0", "-1", "nan", "inf", "two", "0.001"] {
            let err = parse_cpu(bad).expect_err("refused").to_string();
            assert!(err.starts_with("--max-cpu:"), "{bad}: {err}");
        }
        for bad in ["1M", "12", "lots", "99999999999999G", "M"] {
            let err = parse_memory(bad).expect_err("refused").to_string();
            assert!(err.starts_with("--max-memory:"), "{bad}: {err}");
        }
    }

    #[test]
    fn pressure_is_the_tighter_limit() {
        let config = BudgetConfig {
            max_cpu: Limit::At(0.5),
            max_memory: Limit::At(100 << 20),
        };
        assert!((config.pressure(0.25, 10 << 20) - 0.5).abs() < 1e-9);
        assert!((config.pressure(0.1, 150 << 20) - 1.5).abs() < 1e-9);
        let off = BudgetConfig {
            max_cpu: Limit::Off,
            max_memory: Limit::Off,
        };
        assert!(off.pressure(8.0, u64::MAX).abs() < f64::EPSILON);
    }
}
