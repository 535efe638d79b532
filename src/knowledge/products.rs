//! Product sheets (`knowledge/products/*.md`): Markdown with a TOML front matter between
//! `+++` lines. The front matter carries the facts the suitability matcher and the bot
//! rely on; a sheet with a missing or malformed field stops startup, naming file and field.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::questionnaire::definition::{Keywords, Pack, Text};
use crate::questionnaire::matching::normalise;
use crate::suitability::ProductFacts;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProductType {
    MoneyMarket,
    ShortBond,
    LongBond,
    Balanced,
    Equity,
    IndexEtf,
    Qdii,
    StructuredDeposit,
    Reit,
    PrivateHighRisk,
}

impl ProductType {
    /// The name used in front matter, payloads and query strings.
    pub fn as_str(self) -> &'static str {
        match self {
            ProductType::MoneyMarket => "money_market",
            ProductType::ShortBond => "short_bond",
            ProductType::LongBond => "long_bond",
            ProductType::Balanced => "balanced",
            ProductType::Equity => "equity",
            ProductType::IndexEtf => "index_etf",
            ProductType::Qdii => "qdii",
            ProductType::StructuredDeposit => "structured_deposit",
            ProductType::Reit => "reit",
            ProductType::PrivateHighRisk => "private_high_risk",
        }
    }

    pub fn parse(name: &str) -> Option<ProductType> {
        ProductType::ALL.into_iter().find(|t| t.as_str() == name)
    }

    pub const ALL: [ProductType; 10] = [
        ProductType::MoneyMarket,
        ProductType::ShortBond,
        ProductType::LongBond,
        ProductType::Balanced,
        ProductType::Equity,
        ProductType::IndexEtf,
        ProductType::Qdii,
        ProductType::StructuredDeposit,
        ProductType::Reit,
        ProductType::PrivateHighRisk,
    ];

    pub fn label(self) -> Text {
        let (zh, en) = match self {
            ProductType::MoneyMarket => ("货币市场基金", "money market fund"),
            ProductType::ShortBond => ("短债基金", "short-term bond fund"),
            ProductType::LongBond => ("中长期债券基金", "long-term bond fund"),
            ProductType::Balanced => ("混合型基金", "balanced fund"),
            ProductType::Equity => ("股票型基金", "equity fund"),
            ProductType::IndexEtf => ("指数基金", "index fund"),
            ProductType::Qdii => ("QDII基金", "QDII fund"),
            ProductType::StructuredDeposit => ("结构性存款", "structured deposit"),
            ProductType::Reit => ("公募REITs", "public REIT fund"),
            ProductType::PrivateHighRisk => {
                ("私募类高风险产品", "private-placement high-risk product")
            }
        };
        Text {
            zh: zh.into(),
            en: en.into(),
        }
    }
}

/// The front matter of a sheet.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sheet {
    pub id: String,
    pub name: Text,
    #[serde(rename = "type")]
    pub kind: ProductType,
    /// On the Chinese R1–R5 scale.
    pub risk_level: String,
    /// PRIIPs summary risk indicator, 1–7.
    pub sri: u8,
    pub currency: String,
    pub minimum_investment: u64,
    pub lockup_months: u32,
    pub redemption_days: u32,
    pub principal_protected: bool,
    /// Launch date, `YYYY-MM-DD`.
    pub inception: String,
    pub manager: Text,
    pub benchmark: Text,
    /// Largest peak-to-trough fall since launch, in percent (positive).
    pub max_drawdown_pct: f64,
    pub fees: Fees,
    /// Calendar-year returns in percent, by year.
    pub annual_returns_pct: BTreeMap<String, f64>,
    pub keywords: Keywords,
}

/// Fees in percent: one-off on subscription and redemption (the headline rate), yearly
/// for the rest.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Fees {
    pub subscription_pct: f64,
    pub redemption_pct: f64,
    pub management_pct: f64,
    pub custody_pct: f64,
    #[serde(default)]
    pub sales_service_pct: Option<f64>,
    #[serde(default)]
    pub performance_fee_pct: Option<f64>,
}

impl Sheet {
    /// 1 (R1) to 5 (R5).
    pub fn risk_rank(&self) -> u8 {
        self.risk_level[1..].parse().unwrap_or(5)
    }
}

/// A product: its sheet and its Markdown body.
#[derive(Debug, Clone, PartialEq)]
pub struct Product {
    pub sheet: Sheet,
    pub body: String,
    pub file: String,
}

impl Product {
    /// The facts the suitability matcher takes, rated on `pack`'s scale (its R level,
    /// or its SRI when the pack uses that scale).
    pub fn facts(&self, pack: &Pack) -> ProductFacts {
        let sri = format!("SRI{}", self.sheet.sri);
        let risk_level = if pack.product_rank(&self.sheet.risk_level).is_some() {
            self.sheet.risk_level.clone()
        } else if pack.product_rank(&sri).is_some() {
            sri
        } else {
            self.sheet.risk_level.clone()
        };
        ProductFacts {
            id: self.sheet.id.clone(),
            risk_level,
            lockup_months: self.sheet.lockup_months,
            redemption_days: self.sheet.redemption_days,
            minimum_investment: self.sheet.minimum_investment,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("knowledge file {file}: {problem}")]
pub struct SheetError {
    pub file: String,
    pub problem: String,
}

/// Splits a document into its TOML front matter (between `+++` lines) and its body, and
/// deserialises the front matter; a type error names the field it is in.
pub fn front_matter<T: serde::de::DeserializeOwned>(
    file: &str,
    text: &str,
) -> Result<(T, String), SheetError> {
    let fail = |problem: String| SheetError {
        file: file.to_string(),
        problem,
    };
    let rest = text
        .trim_start_matches('\u{feff}')
        .strip_prefix("+++")
        .ok_or_else(|| fail("does not start with a +++ front matter".into()))?;
    let (front, body) = rest
        .split_once("\n+++")
        .ok_or_else(|| fail("the front matter has no closing +++".into()))?;
    let parsed: T = toml::from_str(front).map_err(|e| {
        let message = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
        let located = e.span().and_then(|span| {
            let line_start = front[..span.start].rfind('\n').map_or(0, |i| i + 1);
            let line_no = front[..span.start].matches('\n').count();
            let key = front[line_start..].split('=').next()?.trim();
            let key_ok = !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            Some(if key_ok && !message.contains(key) {
                format!("field {key}: {message} (front matter line {line_no})")
            } else {
                format!("{message} (front matter line {line_no})")
            })
        });
        fail(located.unwrap_or(message))
    })?;
    Ok((
        parsed,
        body.trim_start_matches(['+', '\n']).trim().to_string(),
    ))
}

/// Parses one sheet.
pub fn parse_sheet(file: &str, text: &str) -> Result<Product, SheetError> {
    let fail = |problem: String| SheetError {
        file: file.to_string(),
        problem,
    };
    let (sheet, body): (Sheet, String) = front_matter(file, text)?;
    let field = |name: &str, problem: String| fail(format!("field {name}: {problem}"));
    if sheet.id.is_empty()
        || !sheet
            .id
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(field(
            "id",
            format!("{:?} must be uppercase letters, digits and '-'", sheet.id),
        ));
    }
    if !["R1", "R2", "R3", "R4", "R5"].contains(&sheet.risk_level.as_str()) {
        return Err(field(
            "risk_level",
            format!("{:?} is not R1 to R5", sheet.risk_level),
        ));
    }
    if !(1..=7).contains(&sheet.sri) {
        return Err(field("sri", format!("{} is not 1 to 7", sheet.sri)));
    }
    if sheet.name.zh.trim().is_empty() || sheet.name.en.trim().is_empty() {
        return Err(field("name", "needs zh-CN and en".into()));
    }
    if sheet.currency.len() != 3 || !sheet.currency.chars().all(|c| c.is_ascii_uppercase()) {
        return Err(field(
            "currency",
            format!("{:?} is not an ISO currency code", sheet.currency),
        ));
    }
    if !valid_date(&sheet.inception) {
        return Err(field(
            "inception",
            format!("{:?} is not a YYYY-MM-DD date", sheet.inception),
        ));
    }
    for (name, text) in [("manager", &sheet.manager), ("benchmark", &sheet.benchmark)] {
        if text.zh.trim().is_empty() || text.en.trim().is_empty() {
            return Err(field(name, "needs zh-CN and en".into()));
        }
    }
    if !(0.0..=100.0).contains(&sheet.max_drawdown_pct) {
        return Err(field(
            "max_drawdown_pct",
            format!(
                "{} is not a percentage from 0 to 100",
                sheet.max_drawdown_pct
            ),
        ));
    }
    let f = &sheet.fees;
    for (name, value) in [
        ("subscription_pct", Some(f.subscription_pct)),
        ("redemption_pct", Some(f.redemption_pct)),
        ("management_pct", Some(f.management_pct)),
        ("custody_pct", Some(f.custody_pct)),
        ("sales_service_pct", f.sales_service_pct),
        ("performance_fee_pct", f.performance_fee_pct),
    ] {
        if let Some(v) = value.filter(|v| !(0.0..=50.0).contains(v)) {
            return Err(field(
                &format!("fees.{name}"),
                format!("{v} is not a percentage from 0 to 50"),
            ));
        }
    }
    for (year, value) in &sheet.annual_returns_pct {
        let year_ok = year.len() == 4 && year.parse::<u16>().is_ok_and(|y| y >= 1990);
        if !year_ok || !(-100.0..=1000.0).contains(value) {
            return Err(field(
                "annual_returns_pct",
                format!("{year} = {value} is not a year and a return in percent"),
            ));
        }
    }
    Ok(Product {
        sheet,
        body,
        file: file.to_string(),
    })
}

/// The `*.md` files directly in `dir`, sorted by path.
pub fn markdown_files(dir: &Path) -> Result<Vec<std::path::PathBuf>, SheetError> {
    let entries = std::fs::read_dir(dir).map_err(|e| SheetError {
        file: dir.display().to_string(),
        problem: format!("cannot read the directory: {e}"),
    })?;
    let mut paths: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    paths.sort();
    Ok(paths)
}

fn valid_date(s: &str) -> bool {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(s, &format).is_ok()
}

/// The products a deployment offers.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    products: Vec<Product>,
}

impl Catalog {
    /// Loads every `*.md` sheet in `dir`; an absent directory gives an empty catalog
    /// when `allow_missing`.
    pub fn load(dir: &Path, allow_missing: bool) -> Result<Catalog, SheetError> {
        if !dir.exists() && allow_missing {
            tracing::warn!(dir = %dir.display(), "no product sheets: the bot will not discuss products");
            return Ok(Catalog::default());
        }
        let mut products: Vec<Product> = Vec::new();
        for path in markdown_files(dir)? {
            let file = path.display().to_string();
            let text = std::fs::read_to_string(&path).map_err(|e| SheetError {
                file: file.clone(),
                problem: format!("cannot read: {e}"),
            })?;
            let product = parse_sheet(&file, &text)?;
            if products.iter().any(|p| p.sheet.id == product.sheet.id) {
                return Err(SheetError {
                    file,
                    problem: format!("product id {} is used twice", product.sheet.id),
                });
            }
            products.push(product);
        }
        Ok(Catalog { products })
    }

    pub fn products(&self) -> &[Product] {
        &self.products
    }

    pub fn get(&self, id: &str) -> Option<&Product> {
        self.products.iter().find(|p| p.sheet.id == id)
    }

    /// The product a message names (by id, name or keyword), when exactly one is named.
    pub fn mentioned(&self, text: &str) -> Option<&Product> {
        let t = normalise(text);
        let mut found = self.products.iter().filter(|p| {
            let s = &p.sheet;
            [&s.id, &s.name.zh, &s.name.en]
                .into_iter()
                .chain(&s.keywords.zh)
                .chain(&s.keywords.en)
                .map(|k| normalise(k))
                .any(|k| k.chars().count() >= 2 && t.contains(&k))
        });
        let first = found.next()?;
        found.next().is_none().then_some(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHEET: &str = "+++\nid = \"HB-X-01\"\nname = { zh-CN = \"测试\", en = \"Test\" }\ntype = \"equity\"\nrisk_level = \"R4\"\nsri = 5\ncurrency = \"CNY\"\nminimum_investment = 1000\nlockup_months = 0\nredemption_days = 4\nprincipal_protected = false\ninception = \"2020-01-02\"\nmanager = { zh-CN = \"甲\", en = \"A\" }\nbenchmark = { zh-CN = \"乙\", en = \"B\" }\nmax_drawdown_pct = 12.5\nfees = { subscription_pct = 1.2, redemption_pct = 0.5, management_pct = 1.2, custody_pct = 0.2 }\nannual_returns_pct = { 2021 = 3.5, 2022 = -8.0 }\nkeywords = { zh-CN = [\"测试基金\"], en = [\"test fund\"] }\n+++\n\n## Summary\nFictional.\n";

    #[test]
    fn a_sheet_parses() {
        let p = parse_sheet("x.md", SHEET).unwrap();
        assert_eq!(p.sheet.kind, ProductType::Equity);
        assert!(p.body.starts_with("## Summary"));
    }

    #[test]
    fn broken_sheets_name_file_and_field() {
        let e = parse_sheet("x.md", &SHEET.replace("risk_level = \"R4\"\n", "")).unwrap_err();
        assert!(e.problem.contains("risk_level"), "{e}");
        let e = parse_sheet("x.md", &SHEET.replace("\"equity\"", "\"tulips\"")).unwrap_err();
        assert!(e.problem.contains("tulips"), "{e}");
        let e = parse_sheet("x.md", &SHEET.replace("= 1000\n", "= \"a lot\"\n")).unwrap_err();
        assert!(e.problem.contains("a lot"), "{e}");
        assert!(e.problem.contains("field minimum_investment"), "{e}");
        let e = parse_sheet("x.md", &SHEET.replace("12.5", "\"12.5%\"")).unwrap_err();
        assert!(e.problem.starts_with("field max_drawdown_pct"), "{e}");
        let e = parse_sheet("x.md", &SHEET.replace("2020-01-02", "2020-13-02")).unwrap_err();
        assert!(e.problem.starts_with("field inception"), "{e}");
        let e = parse_sheet("x.md", &SHEET.replace("custody_pct", "cusstody_pct")).unwrap_err();
        assert!(e.problem.contains("cusstody_pct"), "{e}");
        let e = parse_sheet("x.md", &SHEET.replace("\"R4\"", "\"R9\"")).unwrap_err();
        assert_eq!(e.problem, "field risk_level: \"R9\" is not R1 to R5");
        let e = parse_sheet("x.md", "## no front matter").unwrap_err();
        assert!(e.problem.contains("+++"), "{e}");
        assert!(e.to_string().starts_with("knowledge file x.md"));
    }

    #[test]
    fn the_shipped_catalog_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("knowledge/products");
        let catalog = Catalog::load(&dir, false).unwrap();
        assert!(catalog.products().len() >= 10);
        for p in catalog.products() {
            for k in p.sheet.keywords.en.iter().chain(&p.sheet.keywords.zh) {
                assert_eq!(
                    catalog.mentioned(k).map(|m| &m.sheet.id),
                    Some(&p.sheet.id),
                    "{k}"
                );
            }
        }
    }
}
