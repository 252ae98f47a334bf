// Queries of the results database: pareto, studies, export, report.
#include <algorithm>
#include <cctype>
#include <charconv>
#include <chrono>
#include <cmath>
#include <ctime>
#include <fstream>
#include <map>
#include <set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli/commands.hpp"
#include "cli/report_html.hpp"
#include "core/base/error.hpp"
#include "core/decompose/factor_cache.hpp"
#include "core/base/suggest.hpp"
#include "db/open_store.hpp"
#include "search/pareto.hpp"
#include "search/strategy.hpp"

namespace rankscope::cli {

namespace {

nlohmann::json number(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); }

// The shortest decimal that parses back to exactly `v` (as %.17g, without its noise digits);
// "nan", "inf", "-inf" for non-finite values.
std::string exact_number(double v) {
  if (std::isnan(v)) return "nan";
  return fmt::format("{}", v);
}

std::string fmt_value(double v) {
  if (!std::isfinite(v)) return "nan";
  if (std::fabs(v) >= 1e5 && std::fabs(v - std::round(v)) < 1e-9) return fmt::format("{:.0f}", v);
  return fmt::format("{:.6g}", v);
}

// "a>=1 and b<2" as constraints: conditions METRIC OP NUMBER (OP one of >= <= > <) joined by
// "and" (any case), "&&" or ",". A grammar error names what was expected, what was found and the
// character of the expression (1-based) where it was found.
std::vector<Constraint> parse_where(const std::string& text) {
  std::vector<Constraint> constraints;
  size_t pos = 0;
  const auto error = [&](size_t at, const std::string& what) {
    fail("--where \"{}\": {} at character {}", text, what, at + 1);
  };
  const auto is_space = [](char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; };
  const auto skip_spaces = [&] {
    while (pos < text.size() && is_space(text[pos])) ++pos;
  };
  // What stands at `at`: the next word, quoted, or "the end".
  const auto found = [&](size_t at) -> std::string {
    if (at >= text.size()) return "the end";
    size_t end = at;
    while (end < text.size() && !is_space(text[end])) ++end;
    return "'" + text.substr(at, end - at) + "'";
  };
  const auto is_metric_char = [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '_' || c == '.' || c == '-' || c == '/';
  };
  const auto at_word = [&](std::string_view word) {
    if (pos + word.size() > text.size()) return false;
    for (size_t i = 0; i < word.size(); ++i) {
      if (std::tolower(static_cast<unsigned char>(text[pos + i])) != word[i]) return false;
    }
    return pos + word.size() == text.size() || !is_metric_char(text[pos + word.size()]);
  };
  skip_spaces();
  while (pos < text.size()) {
    const size_t start = pos;
    if (text[pos] == '(' || text[pos] == ')') error(pos, "parentheses are not supported (conditions are joined by 'and' only)");
    while (pos < text.size() && is_metric_char(text[pos])) ++pos;
    if (pos == start) error(pos, "expected a metric name (letters, digits, _ . - /), found " + found(pos));
    const std::string metric = text.substr(start, pos - start);
    skip_spaces();
    std::string op;
    if (text.compare(pos, 2, ">=") == 0 || text.compare(pos, 2, "<=") == 0) {
      op = text.substr(pos, 2);
    } else if (pos < text.size() && (text[pos] == '>' || text[pos] == '<')) {
      op = text.substr(pos, 1);
    } else if (pos < text.size() && (text[pos] == '=' || text[pos] == '!')) {
      const std::string given = text.compare(pos, 2, "==") == 0 || text.compare(pos, 2, "!=") == 0 ? text.substr(pos, 2)
                                                                                                      : text.substr(pos, 1);
      error(pos, "'" + given + "' is not supported after '" + metric + "' (compare with >=, <=, > or <)");
    } else {
      error(pos, "expected >=, <=, > or < after '" + metric + "', found " + found(pos));
    }
    pos += op.size();
    skip_spaces();
    const size_t number_start = pos;
    while (pos < text.size() && !is_space(text[pos]) && text[pos] != ',' && text[pos] != '&') ++pos;
    std::string_view number(text.data() + number_start, pos - number_start);
    if (number.empty()) error(number_start, "expected a number after '" + metric + op + "', found " + found(number_start));
    if (number.front() == '+') number.remove_prefix(1);
    double bound = 0;
    const auto [end, ec] = std::from_chars(number.data(), number.data() + number.size(), bound);
    if (number.empty() || ec != std::errc() || end != number.data() + number.size() || !std::isfinite(bound)) {
      error(number_start, "'" + text.substr(number_start, pos - number_start) + "' is not a finite number");
    }
    constraints.push_back({metric, op, bound});
    const std::string condition = text.substr(start, pos - start);
    skip_spaces();
    if (pos == text.size()) break;
    const size_t joiner = pos;
    if (text[pos] == ',') {
      pos += 1;
    } else if (text.compare(pos, 2, "&&") == 0) {
      pos += 2;
    } else if (at_word("and")) {
      pos += 3;
    } else if (at_word("or") || text.compare(pos, 2, "||") == 0) {
      error(pos, "'" + text.substr(pos, 2) + "' is not supported: every condition must hold (join them with 'and')");
    } else {
      error(pos, "expected 'and' or ',' after '" + condition + "', found " + found(pos));
    }
    const std::string joined_by = text.substr(joiner, pos - joiner);
    skip_spaces();
    if (pos == text.size()) error(pos, "expected a condition after '" + joined_by + "', found the end");
  }
  return constraints;
}

std::unique_ptr<ResultsStore> open_existing(const std::string& where) {
  if (where.empty()) throw Error("--db FILE|URI is required");
  StoreOptions options;
  options.create = false;  // a mistyped path is an error, not a new empty database
  return open_results_store(where, options);
}

// Every metric named in objectives or filters must be in the database: an unknown name is an
// error (with the closest stored name), not an empty front.
void check_stored_metrics(const ResultsStore& db, const std::vector<std::string>& names, const std::string& option) {
  const std::vector<std::string> stored = db.metric_names();
  for (const auto& name : names) {
    if (std::find(stored.begin(), stored.end(), name) != stored.end()) continue;
    fail("{}: {}: no metric '{}' in this database{}", db.display(), option, name, did_you_mean(name, stored));
  }
}

StudyInfo require_study(const ResultsStore& db, const std::string& name) {
  if (name.empty()) throw Error("--study NAME is required");
  auto s = db.find_study(name);
  if (!s) {
    std::string names;
    for (const auto& st : db.studies()) names += (names.empty() ? "" : ", ") + st.name;
    fail("{}: no study '{}' (studies: {})", db.display(), name, names.empty() ? "none" : names);
  }
  return *s;
}

struct Front {
  std::vector<Objective> objectives;
  std::vector<Constraint> where;
  MetricRows rows;
  std::vector<size_t> candidates;  // rows that pass the filter and have every objective
  std::vector<size_t> front;       // indices into rows, sorted by the first objective
  std::vector<double> ref;
  double hypervolume = 0.0;
};

Front compute_front(const ResultsStore& db, const StudyInfo& study, const Params& params) {
  Front f;
  std::string objectives = params.objectives;
  if (objectives.empty()) objectives = study.settings.value("objectives", std::string());
  if (objectives.empty()) throw Error("--objectives is required (the study records none)");
  f.objectives = parse_objectives(objectives);
  f.where = parse_where(params.where);
  std::vector<std::string> metrics;
  for (const auto& o : f.objectives) metrics.push_back(o.metric);
  check_stored_metrics(db, metrics, "--objectives");
  for (const auto& c : f.where) metrics.push_back(c.metric);
  check_stored_metrics(db, std::vector<std::string>(metrics.begin() + static_cast<long>(f.objectives.size()), metrics.end()),
                       "--where");
  f.rows = db.metric_rows(study.id, metrics);
  const size_t m = f.objectives.size();
  std::vector<bool> minimize;
  for (const auto& o : f.objectives) minimize.push_back(o.minimize);
  // Complete evaluations only, unless --include-pruned: a pruned one's metrics cover a prefix of
  // the data, and a lucky prefix must not push complete points off the front unasked.
  const auto joins = [&](EvalStatus status) {
    return status == EvalStatus::done || (params.include_pruned && status == EvalStatus::pruned);
  };
  for (size_t i = 0; i < f.rows.rows.size(); ++i) {
    if (!joins(f.rows.statuses[i])) continue;
    const auto& row = f.rows.rows[i];
    bool ok = true;
    for (size_t j = 0; j < m; ++j) ok = ok && std::isfinite(row[j]);
    for (size_t c = 0; c < f.where.size() && ok; ++c) {
      std::map<std::string, double> one{{f.where[c].metric, row[m + c]}};
      ok = std::isfinite(row[m + c]) && satisfies(one, {f.where[c]});
    }
    if (ok) f.candidates.push_back(i);
  }
  // The rows hold exactly the objectives when there is no filter: no copy of a million rows then.
  std::vector<std::vector<double>> copied;
  const bool all_rows = f.where.empty() && f.candidates.size() == f.rows.rows.size();
  if (!all_rows) {
    copied.reserve(f.candidates.size());
    for (size_t i : f.candidates) copied.emplace_back(f.rows.rows[i].begin(), f.rows.rows[i].begin() + static_cast<long>(m));
  }
  const auto& values = all_rows ? f.rows.rows : copied;
  for (size_t k : pareto_front(values, minimize)) f.front.push_back(f.candidates[k]);
  std::sort(f.front.begin(), f.front.end(), [&](size_t a, size_t b) {
    const double x = f.rows.rows[a][0], y = f.rows.rows[b][0];
    return x != y ? (f.objectives[0].minimize ? x < y : x > y) : f.rows.evaluation_ids[a] < f.rows.evaluation_ids[b];
  });
  // Reference point: given, or the worst value of each objective over the candidates plus 10 %
  // of its range (1 when the range is 0).
  if (!params.ref.empty()) {
    for (const auto& item : split_list(params.ref)) {
      try {
        f.ref.push_back(std::stod(item));
      } catch (const std::exception&) {
        fail("--ref: '{}' is not a number", item);
      }
    }
    if (f.ref.size() != m) fail("--ref has {} values for {} objectives", f.ref.size(), m);
  } else if (!values.empty()) {
    for (size_t j = 0; j < m; ++j) {
      double lo = values[0][j], hi = values[0][j];
      for (const auto& v : values) {
        lo = std::min(lo, v[j]);
        hi = std::max(hi, v[j]);
      }
      const double pad = hi > lo ? 0.1 * (hi - lo) : 1.0;
      f.ref.push_back(f.objectives[j].minimize ? hi + pad : lo - pad);
    }
  }
  // The front alone dominates exactly what every candidate dominates.
  std::vector<std::vector<double>> front_values;
  for (size_t i : f.front) front_values.emplace_back(f.rows.rows[i].begin(), f.rows.rows[i].begin() + static_cast<long>(m));
  if (!front_values.empty()) f.hypervolume = hypervolume(front_values, minimize, f.ref);
  return f;
}

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n\r") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + "\"";
}

std::string objectives_text(const std::vector<Objective>& objectives) {
  std::string s;
  for (const auto& o : objectives) s += (s.empty() ? "" : ",") + o.metric + (o.minimize ? ":min" : ":max");
  return s;
}

}  // namespace

int run_pareto(const Params& params) {
  const auto db_store = open_existing(params.db);
  const ResultsStore& db = *db_store;
  const StudyInfo study = require_study(db, params.study);
  const Front f = compute_front(db, study, params);
  const size_t m = f.objectives.size();
  if (params.format == "json") {
    nlohmann::json front = nlohmann::json::array();
    for (size_t i : f.front) {
      nlohmann::json values;
      for (size_t j = 0; j < m; ++j) values[f.objectives[j].metric] = number(f.rows.rows[i][j]);
      front.push_back({{"evaluation", f.rows.evaluation_ids[i]},
                       {"config", f.rows.configs[i]},
                       {"status", status_name(f.rows.statuses[i])},
                       {"values", values}});
    }
    nlohmann::json out = {{"study", study.name},           {"objectives", objectives_text(f.objectives)},
                          {"where", params.where},         {"include_pruned", params.include_pruned},
                          {"evaluations", f.candidates.size()},
                          {"hypervolume", f.hypervolume},  {"ref", f.ref},
                          {"front", front}};
    fmt::print("{}\n", out.dump(2));
  } else if (params.format == "csv") {
    // With --include-pruned a status column says which points are pruned (partial metrics).
    std::string header = params.include_pruned ? "evaluation,config,status" : "evaluation,config";
    for (const auto& o : f.objectives) header += "," + o.metric;
    fmt::print("{}\n", header);
    for (size_t i : f.front) {
      std::string line = fmt::format("{},{}", f.rows.evaluation_ids[i], csv_field(f.rows.configs[i]));
      if (params.include_pruned) line += fmt::format(",{}", status_name(f.rows.statuses[i]));
      for (size_t j = 0; j < m; ++j) line += "," + exact_number(f.rows.rows[i][j]);
      fmt::print("{}\n", line);
    }
  } else if (params.format == "table") {
    fmt::print("study {}: Pareto front of {} over {} evaluations{}{}\n\n", study.name, objectives_text(f.objectives),
               f.candidates.size(), params.include_pruned ? " (pruned ones included)" : "",
               params.where.empty() ? "" : " where " + params.where);
    std::string header = fmt::format("{:>6}", "id");
    for (const auto& o : f.objectives) header += fmt::format("  {:>18}", o.metric);
    fmt::print("{}  config\n", header);
    for (size_t i : f.front) {
      std::string line = fmt::format("{:>6}", f.rows.evaluation_ids[i]);
      for (size_t j = 0; j < m; ++j) line += fmt::format("  {:>18}", fmt_value(f.rows.rows[i][j]));
      fmt::print("{}  {}{}\n", line, f.rows.configs[i].empty() ? "(base model)" : f.rows.configs[i],
                 f.rows.statuses[i] == EvalStatus::pruned ? "  [pruned]" : "");
    }
    std::string ref;
    for (double r : f.ref) ref += (ref.empty() ? "" : ",") + fmt_value(r);
    fmt::print("\n{} points on the front; hypervolume {} (reference {})\n", f.front.size(), fmt_value(f.hypervolume), ref);
  } else {
    fail("--format: unknown format '{}' (table, csv or json)", params.format);
  }
  return 0;
}

int run_studies(const Params& params) {
  if (params.delete_study || !params.rename.empty()) {
    if (params.delete_study && !params.rename.empty()) throw Error("--delete and --rename cannot be combined");
    if (params.study.empty()) fail("--{} needs the study: --study NAME", params.delete_study ? "delete" : "rename");
    const auto db_store = open_existing(params.db);
    ResultsStore& db = *db_store;
    const StudyInfo study = require_study(db, params.study);
    if (params.delete_study) {
      // Workers still running would lose their claims under them and fail on their next write.
      const double now = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
      const double stale_after = study.settings.value("stale_after", 600.0);
      int64_t live = 0;
      for (const auto& c : db.claims(study.id)) live += claim_is_stale(c, now, stale_after) ? 0 : 1;
      if (live > 0)
        fail("{}: study '{}' has {} live claims (workers are running): stop them, or wait {:g} s after they died",
             db.display(), study.name, live, stale_after);
      db.delete_study(study.name);
      fmt::print("deleted study '{}' ({} evaluations) from {}\n", study.name, study.counts.total(), db.display());
    } else {
      db.rename_study(study.name, params.rename);
      fmt::print("renamed study '{}' to '{}' in {}\n", study.name, params.rename, db.display());
    }
    return 0;
  }
  const auto db_store = open_existing(params.db);
  const ResultsStore& db = *db_store;
  const auto studies = db.studies();
  nlohmann::json out = nlohmann::json::array();
  if (!params.json)
    fmt::print("{:<32} {:>7} {:>7} {:>7} {:>7} {:>7}  best\n", "study", "done", "failed", "nan", "pruned", "claimed");
  for (const auto& s : studies) {
    // Best point of each objective the study declared.
    std::string best_text;
    nlohmann::json best = nlohmann::json::object();
    const std::string objectives = s.settings.value("objectives", std::string());
    if (!objectives.empty()) {
      const auto objs = parse_objectives(objectives);
      std::vector<std::string> names;
      for (const auto& o : objs) names.push_back(o.metric);
      const MetricRows rows = db.metric_rows(s.id, names);
      for (size_t j = 0; j < objs.size(); ++j) {
        std::optional<size_t> bi;
        for (size_t i = 0; i < rows.rows.size(); ++i) {
          const double v = rows.rows[i][j];
          if (rows.statuses[i] != EvalStatus::done || !std::isfinite(v)) continue;
          if (!bi || (objs[j].minimize ? v < rows.rows[*bi][j] : v > rows.rows[*bi][j])) bi = i;
        }
        if (!bi) continue;
        best[objs[j].metric] = {{"value", rows.rows[*bi][j]}, {"config", rows.configs[*bi]}};
        best_text += fmt::format("{}{} {} ({})", best_text.empty() ? "" : "; ", objs[j].metric, fmt_value(rows.rows[*bi][j]),
                                 rows.configs[*bi].empty() ? "base" : rows.configs[*bi]);
      }
    }
    // The claims: which worker evaluates what, and how long since its last heartbeat.
    const double now = unix_now();
    const double stale_after = s.settings.value("stale_after", 600.0);
    nlohmann::json claims = nlohmann::json::array();
    std::string claims_text;
    for (const auto& c : db.claims(s.id)) {
      const bool stale = claim_is_stale(c, now, stale_after);
      claims.push_back({{"config", c.config}, {"worker", c.worker}, {"claimed_at", c.claimed_at},
                        {"heartbeat_age_s", now - c.heartbeat_at}, {"stale", stale}});
      claims_text += fmt::format("  {} evaluates {} (heartbeat {:.0f} s ago{})\n", c.worker,
                                 c.config.empty() ? "the base model" : c.config, now - c.heartbeat_at,
                                 stale ? ", stale: another worker may take it over" : "");
    }
    if (params.json) {
      out.push_back({{"study", s.name},
                     {"done", s.counts.done},
                     {"failed", s.counts.failed},
                     {"nan", s.counts.nan},
                     {"pruned", s.counts.pruned},
                     {"claimed", s.counts.claimed},
                     {"claims", claims},
                     {"settings", s.settings},
                     {"best", best}});
    } else {
      fmt::print("{:<32} {:>7} {:>7} {:>7} {:>7} {:>7}  {}\n{}", s.name, s.counts.done, s.counts.failed, s.counts.nan,
                 s.counts.pruned, s.counts.claimed, best_text, claims_text);
    }
  }
  if (params.json) fmt::print("{}\n", out.dump(2));
  return 0;
}

namespace {

// Export and report: numbers at full precision, times in ISO 8601, names escaped for their format.

// Unix seconds as ISO 8601 UTC with microseconds ("2026-11-29T04:26:24.123456Z"); "" for NaN.
std::string iso8601_utc(double unix_seconds) {
  if (!std::isfinite(unix_seconds)) return "";
  auto whole = static_cast<std::time_t>(std::floor(unix_seconds));
  auto micros = static_cast<int64_t>(std::llround((unix_seconds - static_cast<double>(whole)) * 1e6));
  if (micros >= 1000000) {
    whole += 1;
    micros -= 1000000;
  }
  std::tm tm{};
  gmtime_r(&whole, &tm);
  return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                     tm.tm_min, tm.tm_sec, micros);
}

// Text for SVG character data and attribute values.
std::string xml_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&apos;"; break;
      default: out += c;
    }
  }
  return out;
}

// Markdown text (GitHub flavour) shown literally, also inside a table cell: every character with
// a meaning is backslash-escaped, a line break becomes a space (it would end the table row).
std::string md_text(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '\n' || c == '\r') {
      out += ' ';
    } else {
      if (std::string_view("\\`*_{}[]<>()#+-!|~&$").find(c) != std::string_view::npos) out += '\\';
      out += c;
    }
  }
  return out;
}

// A markdown code span showing `s` literally: fenced with more backticks than any run of them in
// `s`, line breaks as spaces; in a table cell pipes escaped too (GitHub reads "\|" in a table
// cell as "|", also in code; elsewhere it would show the backslash).
std::string md_code(const std::string& s, bool table_cell = false) {
  std::string body;
  size_t run = 0, longest = 0;
  for (char c : s) {
    run = c == '`' ? run + 1 : 0;
    longest = std::max(longest, run);
    if (c == '|' && table_cell) {
      body += "\\|";
    } else {
      body += c == '\n' || c == '\r' ? ' ' : c;
    }
  }
  const std::string fence(longest + 1, '`');
  const bool pad = !body.empty() && (body.front() == '`' || body.back() == '`');
  return fence + (pad ? " " : "") + body + (pad ? " " : "") + fence;
}

}  // namespace

int run_export(const Params& params) {
  const auto db_store = open_existing(params.db);
  const ResultsStore& db = *db_store;
  const StudyInfo study = require_study(db, params.study);
  const auto where = parse_where(params.where);
  {
    std::vector<std::string> names;
    for (const auto& c : where) names.push_back(c.metric);
    check_stored_metrics(db, names, "--where");
  }
  std::vector<EvaluationRecord> records;
  std::set<std::string> metric_names;
  db.for_each_evaluation(study.id, [&](const EvaluationRecord& r) {
    std::map<std::string, double> values;
    for (const auto& m : r.metrics) values[m.name] = m.value;
    if (!where.empty() && !satisfies(values, where)) return;
    for (const auto& m : r.metrics) metric_names.insert(m.name);
    records.push_back(r);
  });
  if (params.format == "json") {
    nlohmann::json out = nlohmann::json::array();
    for (const auto& r : records) {
      nlohmann::json metrics = nlohmann::json::object();
      for (const auto& m : r.metrics) {
        metrics[m.name] = {{"value", number(m.value)}, {"stderr", number(m.stderr_)}, {"n", m.n}, {"status", m.status},
                           {"protocol", m.protocol}};
      }
      out.push_back({{"evaluation", r.id},        {"config", r.config},      {"config_hash", r.config_hash},
                     {"model_hash", r.model_hash}, {"status", status_name(r.status)}, {"worker", r.worker},
                     {"host", r.host},            {"claimed_at", r.claimed_at}, {"finished_at", number(r.finished_at)},
                     {"wall_s", number(r.wall_s)}, {"error", r.error},       {"metrics", metrics}});
    }
    fmt::print("{}\n", nlohmann::json{{"study", study.name}, {"settings", study.settings}, {"evaluations", out}}.dump(2));
  } else if (params.format == "csv" || params.format == "table") {
    // Every number as the shortest decimal that reads back exactly; times ISO 8601 UTC; each
    // metric followed by its standard error (empty when it has none, or the metric is absent).
    std::string header = "evaluation,config,status,model_hash,host,wall_s,claimed_at,finished_at";
    for (const auto& n : metric_names) header += "," + csv_field(n) + "," + csv_field(n + "_stderr");
    fmt::print("{}\n", header);
    for (const auto& r : records) {
      std::map<std::string, const MetricValue*> by_name;
      for (const auto& m : r.metrics) by_name[m.name] = &m;
      std::string line = fmt::format("{},{},{},{},{},{},{},{}", r.id, csv_field(r.config), status_name(r.status),
                                     r.model_hash, csv_field(r.host), std::isnan(r.wall_s) ? "" : exact_number(r.wall_s),
                                     iso8601_utc(r.claimed_at), iso8601_utc(r.finished_at));
      for (const auto& n : metric_names) {
        const auto it = by_name.find(n);
        if (it == by_name.end()) {
          line += ",,";
          continue;
        }
        const MetricValue& m = *it->second;
        line += "," + exact_number(m.value) + "," + (std::isnan(m.stderr_) ? std::string() : exact_number(m.stderr_));
      }
      fmt::print("{}\n", line);
    }
  } else {
    fail("--format: unknown format '{}' (csv or json)", params.format);
  }
  return 0;
}

namespace {

// Spearman's rank correlation (average ranks for ties); NaN for fewer than 3 pairs or no spread.
double spearman(const std::vector<double>& a, const std::vector<double>& b) {
  const size_t n = a.size();
  if (n < 3) return NAN;
  auto ranks = [n](const std::vector<double>& v) {
    std::vector<size_t> idx(n);
    for (size_t i = 0; i < n; ++i) idx[i] = i;
    std::sort(idx.begin(), idx.end(), [&](size_t x, size_t y) { return v[x] < v[y]; });
    std::vector<double> r(n);
    for (size_t i = 0; i < n;) {
      size_t j = i;
      while (j + 1 < n && v[idx[j + 1]] == v[idx[i]]) ++j;
      for (size_t k = i; k <= j; ++k) r[idx[k]] = 0.5 * static_cast<double>(i + j);
      i = j + 1;
    }
    return r;
  };
  const auto ra = ranks(a), rb = ranks(b);
  double ma = 0, mb = 0;
  for (size_t i = 0; i < n; ++i) ma += ra[i], mb += rb[i];
  ma /= static_cast<double>(n);
  mb /= static_cast<double>(n);
  double sab = 0, saa = 0, sbb = 0;
  for (size_t i = 0; i < n; ++i) {
    sab += (ra[i] - ma) * (rb[i] - mb);
    saa += (ra[i] - ma) * (ra[i] - ma);
    sbb += (rb[i] - mb) * (rb[i] - mb);
  }
  return saa > 0 && sbb > 0 ? sab / std::sqrt(saa * sbb) : NAN;
}

// How good the guided strategy's model was: for each objective it predicted (metrics
// predicted.METRIC stored beside the measured ones), over the complete evaluations that carry
// both, the rank correlation and the median relative error. Empty when nothing was predicted.
std::string predicted_section(const ResultsStore& db, const StudyInfo& study, const std::vector<Objective>& objectives) {
  const auto names = db.metric_names();
  std::string table;
  for (const auto& o : objectives) {
    const std::string predicted = "predicted." + o.metric;
    if (!std::binary_search(names.begin(), names.end(), predicted)) continue;
    const MetricRows rows = db.metric_rows(study.id, {o.metric, predicted});
    std::vector<double> measured, guessed, rel;
    for (size_t i = 0; i < rows.rows.size(); ++i) {
      const double m = rows.rows[i][0], p = rows.rows[i][1];
      if (rows.statuses[i] != EvalStatus::done || !std::isfinite(m) || !std::isfinite(p)) continue;
      measured.push_back(m);
      guessed.push_back(p);
      rel.push_back(std::abs(p - m) / std::max(std::abs(m), 1e-300));
    }
    if (measured.empty()) continue;
    std::sort(rel.begin(), rel.end());
    const double median = rel.size() % 2 ? rel[rel.size() / 2] : 0.5 * (rel[rel.size() / 2 - 1] + rel[rel.size() / 2]);
    table += fmt::format("| {} | {} | {} | {} |\n", md_text(o.metric), measured.size(), fmt_value(spearman(guessed, measured)),
                         fmt_value(median));
  }
  if (table.empty()) return "";
  return "\n## The guided strategy's model: predicted against measured\n\n"
         "Over the complete evaluations proposed once the model was fitted (`predicted.METRIC`):\n\n"
         "| objective | evaluations | Spearman rho | median relative error |\n| --- | ---: | ---: | ---: |\n" +
         table;
}

}  // namespace

int run_report(const Params& params) {
  if (params.out.empty()) throw Error("--out DIR is required");
  const auto db_store = open_existing(params.db);
  const ResultsStore& db = *db_store;
  const StudyInfo study = require_study(db, params.study);
  // The interactive page first: it needs neither objectives nor evaluations, so a study the plot
  // below cannot be drawn for still gets one. Names typed are checked before anything is written.
  ReportHtmlOptions html;
  html.objectives = parse_objectives(params.objectives);
  std::vector<std::string> typed;
  for (const auto& o : html.objectives) typed.push_back(o.metric);
  check_stored_metrics(db, typed, "--objectives");
  typed.clear();
  for (const auto& c : parse_where(params.where)) typed.push_back(c.metric);
  check_stored_metrics(db, typed, "--where");
  html.include_pruned = params.include_pruned;
  html.where = params.where;
  html.model = params.model;
  std::filesystem::create_directories(params.out);
  const auto html_path = std::filesystem::path(params.out) / "index.html";
  write_file_atomically(html_path, report_html(db, study, html));
  fmt::print("wrote {}\n", html_path.string());
  const Front f = compute_front(db, study, params);
  if (f.objectives.size() < 2) fail("report: the plot needs two objectives, got {}", f.objectives.size());
  const auto& ox = f.objectives[1];  // x: the second objective (usually size), y: the first
  const auto& oy = f.objectives[0];

  // The plot, as SVG written directly: every evaluation grey, the front red and joined as a staircase.
  constexpr double W = 720, H = 480, L = 90, R = 30, T = 40, B = 60;
  double xmin = INFINITY, xmax = -INFINITY, ymin = INFINITY, ymax = -INFINITY;
  for (size_t i : f.candidates) {
    xmin = std::min(xmin, f.rows.rows[i][1]);
    xmax = std::max(xmax, f.rows.rows[i][1]);
    ymin = std::min(ymin, f.rows.rows[i][0]);
    ymax = std::max(ymax, f.rows.rows[i][0]);
  }
  if (f.candidates.empty()) xmin = ymin = 0, xmax = ymax = 1;
  if (xmax == xmin) xmin -= 0.5, xmax += 0.5;
  if (ymax == ymin) ymin -= 0.5, ymax += 0.5;
  // An axis spanning more than two decades of positive values is drawn on a log scale
  // (perplexities of broken configurations run to the thousands next to the base model's 4.6).
  const bool xlog = xmin > 0 && xmax / xmin > 100, ylog = ymin > 0 && ymax / ymin > 100;
  auto tx = [&](double v) { return xlog ? std::log10(v) : v; };
  auto ty = [&](double v) { return ylog ? std::log10(v) : v; };
  auto px = [&](double x) { return L + (tx(x) - tx(xmin)) / (tx(xmax) - tx(xmin)) * (W - L - R); };
  auto py = [&](double y) { return H - B - (ty(y) - ty(ymin)) / (ty(ymax) - ty(ymin)) * (H - T - B); };
  auto tick = [](double lo, double hi, bool log, int t) {
    return log ? std::pow(10.0, std::log10(lo) + (std::log10(hi) - std::log10(lo)) * t / 4) : lo + (hi - lo) * t / 4;
  };
  std::string svg = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"12\">\n"
      "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
      "<text x=\"{}\" y=\"22\" font-size=\"15\">{}: {} evaluations, {} on the Pareto front</text>\n",
      W, H, L, xml_escape(study.name), f.candidates.size(), f.front.size());
  svg += fmt::format("<line x1=\"{0}\" y1=\"{1}\" x2=\"{2}\" y2=\"{1}\" stroke=\"black\"/>\n", L, H - B, W - R);
  svg += fmt::format("<line x1=\"{0}\" y1=\"{1}\" x2=\"{0}\" y2=\"{2}\" stroke=\"black\"/>\n", L, T, H - B);
  for (int t = 0; t <= 4; ++t) {
    const double x = tick(xmin, xmax, xlog, t), y = tick(ymin, ymax, ylog, t);
    svg += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n", px(x), H - B + 18, fmt_value(x));
    svg += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n", L - 6, py(y) + 4, fmt_value(y));
  }
  svg += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{} ({}{})</text>\n", (L + W - R) / 2, H - 18, xml_escape(ox.metric),
                     ox.minimize ? "min" : "max", xlog ? ", log scale" : "");
  svg += fmt::format("<text x=\"18\" y=\"{0}\" text-anchor=\"middle\" transform=\"rotate(-90 18 {0})\">{1} ({2}{3})</text>\n",
                     (T + H - B) / 2, xml_escape(oy.metric), oy.minimize ? "min" : "max", ylog ? ", log scale" : "");
  for (size_t i : f.candidates) {
    svg += fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"3\" fill=\"#9a9a9a\" fill-opacity=\"0.6\"/>\n",
                       px(f.rows.rows[i][1]), py(f.rows.rows[i][0]));
  }
  std::vector<size_t> by_x = f.front;
  std::sort(by_x.begin(), by_x.end(), [&](size_t a, size_t b) { return f.rows.rows[a][1] < f.rows.rows[b][1]; });
  std::string path;
  for (size_t k = 0; k < by_x.size(); ++k) {
    const double x = px(f.rows.rows[by_x[k]][1]), y = py(f.rows.rows[by_x[k]][0]);
    if (k == 0) {
      path += fmt::format("M{:.1f},{:.1f}", x, y);
    } else {
      path += fmt::format(" H{:.1f} V{:.1f}", x, y);
    }
  }
  if (!path.empty()) svg += "<path d=\"" + path + "\" fill=\"none\" stroke=\"#c0392b\" stroke-width=\"1.5\"/>\n";
  for (size_t i : f.front) {
    svg += fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"4.5\" fill=\"#c0392b\"/>\n", px(f.rows.rows[i][1]),
                       py(f.rows.rows[i][0]));
  }
  svg += "</svg>\n";
  const auto svg_path = std::filesystem::path(params.out) / "pareto.svg";

  // The markdown table.
  std::string md = fmt::format("# Study {}\n\n{} evaluations ({} done, {} failed, {} nan, {} pruned) in {}.\n\n",
                               md_code(study.name), study.counts.finished(), study.counts.done, study.counts.failed,
                               study.counts.nan, study.counts.pruned, md_code(db.display()));
  md += fmt::format("![Pareto front](pareto.svg)\n\nPareto front of {}{}{}: {} points, hypervolume {}.\n\n",
                    md_code(objectives_text(f.objectives)), params.where.empty() ? "" : " where " + md_code(params.where),
                    params.include_pruned ? " (pruned evaluations included)" : "", f.front.size(),
                    fmt_value(f.hypervolume));
  md += "| id |";
  for (const auto& o : f.objectives) md += " " + md_text(o.metric) + " |";
  md += " configuration |\n| ---: |";
  for (size_t j = 0; j < f.objectives.size(); ++j) md += " ---: |";
  md += " --- |\n";
  for (size_t i : f.front) {
    md += fmt::format("| {} |", f.rows.evaluation_ids[i]);
    for (size_t j = 0; j < f.objectives.size(); ++j) md += " " + fmt_value(f.rows.rows[i][j]) + " |";
    md += " " + md_code(f.rows.configs[i].empty() ? std::string("(base model)") : f.rows.configs[i], true) +
          (f.rows.statuses[i] == EvalStatus::pruned ? " (pruned)" : "") + " |\n";
  }
  md += predicted_section(db, study, f.objectives);
  const auto md_path = std::filesystem::path(params.out) / "report.md";
  // Each file through a temporary renamed into place: a failed write leaves no partial file.
  write_file_atomically(svg_path, svg);
  write_file_atomically(md_path, md);
  fmt::print("wrote {} and {}\n", md_path.string(), svg_path.string());
  return 0;
}

}  // namespace rankscope::cli
