// Jinja evaluation: scopes, Python-like values, tests, filters, methods and globals.
#include <algorithm>
#include <charconv>
#include <cmath>
#include <ctime>
#include <map>

#include "core/core.h"
#include "jinja/ast.h"
#include "jinja/jinja.h"

namespace vla::jinja {
namespace detail {
namespace {

using json = nlohmann::ordered_json;
using Kind = Value::Kind;

// An error raised by a builtin without a line; the expression evaluating it adds the line.
struct EvalError {
  std::string what;
};
[[noreturn]] void err(const std::string& what) { throw EvalError{what}; }

// Control flow out of a loop body.
struct BreakSignal {};
struct ContinueSignal {};

// ---------------------------------------------------------------- UTF-8 helpers
std::vector<std::string> code_points(const std::string& s) {
  std::vector<std::string> out;
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    const size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
    out.push_back(s.substr(i, n));
    i += n;
  }
  return out;
}

// ---------------------------------------------------------------- Python str() / repr()
std::string float_repr(double x) {
  if (std::isnan(x)) return "nan";
  if (std::isinf(x)) return x > 0 ? "inf" : "-inf";
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof(buf), x, std::chars_format::scientific);
  std::string sci(buf, r.ptr);  // shortest round-trip digits, "d.ddde+XX"
  const size_t epos = sci.find('e');
  std::string mant = sci.substr(0, epos);
  const int exp = std::stoi(sci.substr(epos + 1));
  bool neg = !mant.empty() && mant[0] == '-';
  if (neg) mant.erase(0, 1);
  std::string digits;
  for (char c : mant)
    if (c != '.') digits.push_back(c);
  std::string out;
  if (exp < -4 || exp >= 16) {  // Python's repr switches to exponent notation here
    out = digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    char eb[16];
    std::snprintf(eb, sizeof(eb), "e%c%02d", exp < 0 ? '-' : '+', std::abs(exp));
    out += eb;
  } else if (exp < 0) {
    out = "0." + std::string(static_cast<size_t>(-exp - 1), '0') + digits;
  } else {
    const size_t int_len = static_cast<size_t>(exp) + 1;
    if (digits.size() <= int_len) {
      out = digits + std::string(int_len - digits.size(), '0') + ".0";
    } else {
      out = digits.substr(0, int_len) + "." + digits.substr(int_len);
    }
  }
  return neg ? "-" + out : out;
}

std::string py_repr_string(const std::string& s) {
  const bool has_single = s.find('\'') != std::string::npos;
  const bool has_double = s.find('"') != std::string::npos;
  const char q = has_single && !has_double ? '"' : '\'';
  std::string out(1, q);
  for (char c : s) {
    if (c == q || c == '\\') {
      out.push_back('\\');
      out.push_back(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      char b[8];
      std::snprintf(b, sizeof(b), "\\x%02x", static_cast<unsigned char>(c));
      out += b;
    } else {
      out.push_back(c);
    }
  }
  out.push_back(q);
  return out;
}

std::string to_str(const Value& v);
std::string repr(const Value& v) {
  if (v.kind == Kind::kString) return py_repr_string(v.s);
  return to_str(v);
}

std::string to_str(const Value& v) {
  switch (v.kind) {
    case Kind::kUndefined:
      return "";
    case Kind::kNone:
      return "None";
    case Kind::kBool:
      return v.b ? "True" : "False";
    case Kind::kInt:
      return std::to_string(v.i);
    case Kind::kFloat:
      return float_repr(v.f);
    case Kind::kString:
      return v.s;
    case Kind::kList: {
      std::string out = v.is_tuple ? "(" : "[";
      for (size_t i = 0; i < v.list->size(); ++i) out += (i ? ", " : "") + repr((*v.list)[i]);
      if (v.is_tuple && v.list->size() == 1) out += ",";
      return out + (v.is_tuple ? ")" : "]");
    }
    case Kind::kDict: {
      if (v.is_namespace) return "<Namespace>";
      std::string out = "{";
      bool first = true;
      for (const auto& [k, x] : *v.dict) {
        out += (first ? "" : ", ") + py_repr_string(k) + ": " + repr(x);
        first = false;
      }
      return out + "}";
    }
    case Kind::kCallable:
      return "<function>";
  }
  return "";
}

// json.dumps(x, ensure_ascii=False, indent=indent, separators=None, sort_keys=False)
void dump_json_string(std::string& out, const std::string& s) {
  out.push_back('"');
  for (char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char b[8];
          std::snprintf(b, sizeof(b), "\\u%04x", static_cast<unsigned char>(c));
          out += b;
        } else {
          out.push_back(c);
        }
    }
  }
  out.push_back('"');
}
void dump_json(std::string& out, const Value& v, int indent, int level) {
  auto newline = [&](int lv) {
    if (indent < 0) return;
    out.push_back('\n');
    out.append(static_cast<size_t>(indent * lv), ' ');
  };
  const std::string item_sep = indent < 0 ? ", " : ",";
  switch (v.kind) {
    case Kind::kUndefined:
      err("tojson: value is undefined");
    case Kind::kNone:
      out += "null";
      return;
    case Kind::kBool:
      out += v.b ? "true" : "false";
      return;
    case Kind::kInt:
      out += std::to_string(v.i);
      return;
    case Kind::kFloat:
      out += std::isnan(v.f)   ? "NaN"
             : std::isinf(v.f) ? (v.f > 0 ? "Infinity" : "-Infinity")
                               : float_repr(v.f);
      return;
    case Kind::kString:
      dump_json_string(out, v.s);
      return;
    case Kind::kList:
      if (v.list->empty()) {
        out += "[]";
        return;
      }
      out.push_back('[');
      for (size_t i = 0; i < v.list->size(); ++i) {
        if (i) out += item_sep;
        newline(level + 1);
        dump_json(out, (*v.list)[i], indent, level + 1);
      }
      newline(level);
      out.push_back(']');
      return;
    case Kind::kDict: {
      if (v.dict->empty()) {
        out += "{}";
        return;
      }
      out.push_back('{');
      bool first = true;
      for (const auto& [k, x] : *v.dict) {
        if (!first) out += item_sep;
        first = false;
        newline(level + 1);
        dump_json_string(out, k);
        out += ": ";
        dump_json(out, x, indent, level + 1);
      }
      newline(level);
      out.push_back('}');
      return;
    }
    case Kind::kCallable:
      err("tojson: a function is not JSON serializable");
  }
}

// ---------------------------------------------------------------- truth, equality, order
bool truthy(const Value& v) {
  switch (v.kind) {
    case Kind::kUndefined:
    case Kind::kNone:
      return false;
    case Kind::kBool:
      return v.b;
    case Kind::kInt:
      return v.i != 0;
    case Kind::kFloat:
      return v.f != 0;
    case Kind::kString:
      return !v.s.empty();
    case Kind::kList:
      return !v.list->empty();
    case Kind::kDict:
      return !v.dict->empty();
    case Kind::kCallable:
      return true;
  }
  return false;
}
bool is_number(const Value& v) {
  return v.kind == Kind::kInt || v.kind == Kind::kFloat || v.kind == Kind::kBool;
}
double as_double(const Value& v) {
  return v.kind == Kind::kFloat  ? v.f
         : v.kind == Kind::kBool ? (v.b ? 1 : 0)
                                 : static_cast<double>(v.i);
}
int64_t as_int(const Value& v) { return v.kind == Kind::kBool ? (v.b ? 1 : 0) : v.i; }
const char* type_name(const Value& v) {
  switch (v.kind) {
    case Kind::kUndefined:
      return "undefined";
    case Kind::kNone:
      return "NoneType";
    case Kind::kBool:
      return "bool";
    case Kind::kInt:
      return "int";
    case Kind::kFloat:
      return "float";
    case Kind::kString:
      return "str";
    case Kind::kList:
      return v.is_tuple ? "tuple" : "list";
    case Kind::kDict:
      return v.is_namespace ? "Namespace" : "dict";
    case Kind::kCallable:
      return "function";
  }
  return "?";
}

bool equal(const Value& a, const Value& b) {
  if (is_number(a) && is_number(b)) {
    if (a.kind == Kind::kFloat || b.kind == Kind::kFloat) return as_double(a) == as_double(b);
    return as_int(a) == as_int(b);
  }
  if (a.kind != b.kind) return false;
  switch (a.kind) {
    case Kind::kUndefined:
    case Kind::kNone:
      return true;
    case Kind::kString:
      return a.s == b.s;
    case Kind::kList:
      if (a.list->size() != b.list->size()) return false;
      for (size_t i = 0; i < a.list->size(); ++i)
        if (!equal((*a.list)[i], (*b.list)[i])) return false;
      return true;
    case Kind::kDict: {
      if (a.dict == b.dict) return true;
      if (a.dict->size() != b.dict->size()) return false;
      for (const auto& [k, x] : *a.dict) {
        bool found = false;
        for (const auto& [k2, y] : *b.dict)
          if (k == k2) {
            found = equal(x, y);
            break;
          }
        if (!found) return false;
      }
      return true;
    }
    case Kind::kCallable:
      return a.fn == b.fn;
    default:
      return false;
  }
}

int compare(const Value& a, const Value& b) {  // <0, 0, >0; errors like Python 3
  if (is_number(a) && is_number(b)) {
    const double x = as_double(a), y = as_double(b);
    return x < y ? -1 : x > y ? 1 : 0;
  }
  if (a.kind == Kind::kString && b.kind == Kind::kString) return a.s.compare(b.s);
  if (a.kind == Kind::kList && b.kind == Kind::kList) {
    for (size_t i = 0; i < std::min(a.list->size(), b.list->size()); ++i) {
      if (equal((*a.list)[i], (*b.list)[i])) continue;
      return compare((*a.list)[i], (*b.list)[i]);
    }
    return a.list->size() < b.list->size() ? -1 : a.list->size() > b.list->size() ? 1 : 0;
  }
  err(str_cat("'<' not supported between instances of '", type_name(a), "' and '", type_name(b),
              "'"));
}

// ---------------------------------------------------------------- conversions
Value from_json(const json& j) {
  switch (j.type()) {
    case json::value_t::null:
      return Value::none();
    case json::value_t::boolean:
      return Value::boolean(j.get<bool>());
    case json::value_t::number_integer:
    case json::value_t::number_unsigned:
      return Value::integer(j.get<int64_t>());
    case json::value_t::number_float:
      return Value::real(j.get<double>());
    case json::value_t::string:
      return Value::string(j.get<std::string>());
    case json::value_t::array: {
      List l;
      for (const auto& x : j) l.push_back(from_json(x));
      return Value::make_list(std::move(l));
    }
    case json::value_t::object: {
      Dict d;
      for (const auto& [k, x] : j.items()) d.emplace_back(k, from_json(x));
      return Value::make_dict(std::move(d));
    }
    default:
      return Value::undefined();
  }
}

// Items a for loop (or list filter) iterates: list items, dict keys, string characters.
List iterate(const Value& v) {
  switch (v.kind) {
    case Kind::kUndefined:
      return {};
    case Kind::kList:
      return *v.list;
    case Kind::kDict: {
      List keys;
      for (const auto& kv : *v.dict) keys.push_back(Value::string(kv.first));
      return keys;
    }
    case Kind::kString: {
      List chars;
      for (auto& c : code_points(v.s)) chars.push_back(Value::string(c));
      return chars;
    }
    default:
      err(str_cat("'", type_name(v), "' object is not iterable"));
  }
}

const Value* dict_find(const Value& d, const std::string& key) {
  for (const auto& kv : *d.dict)
    if (kv.first == key) return &kv.second;
  return nullptr;
}

int64_t length(const Value& v) {
  switch (v.kind) {
    case Kind::kUndefined:
      return 0;
    case Kind::kString:
      return static_cast<int64_t>(code_points(v.s).size());
    case Kind::kList:
      return static_cast<int64_t>(v.list->size());
    case Kind::kDict:
      return static_cast<int64_t>(v.dict->size());
    default:
      err(str_cat("object of type '", type_name(v), "' has no len()"));
  }
}

Value kwarg(const Kwargs& kw, const std::string& name, const std::vector<Value>& args, size_t pos,
            Value def) {
  for (auto& [k, v] : kw)
    if (k == name) return v;
  return pos < args.size() ? args[pos] : def;
}

// ---------------------------------------------------------------- string methods
std::string strip_chars(const std::string& s, const Value& chars, bool left, bool right) {
  auto drop = [&](char c) {
    return chars.kind == Kind::kString ? chars.s.find(c) != std::string::npos : is_space(c);
  };
  size_t b = 0, e = s.size();
  if (left)
    while (b < e && drop(s[b])) ++b;
  if (right)
    while (e > b && drop(s[e - 1])) --e;
  return s.substr(b, e - b);
}

std::string replace_all(const std::string& s, const std::string& from, const std::string& to,
                        int64_t count) {
  std::string out;
  if (from.empty()) {  // Python inserts `to` between characters
    auto cps = code_points(s);
    int64_t n = 0;
    for (auto& c : cps) {
      if (count < 0 || n < count) {
        out += to;
        ++n;
      }
      out += c;
    }
    if (count < 0 || n < count) out += to;
    return out;
  }
  size_t pos = 0;
  int64_t n = 0;
  while (true) {
    const size_t hit = s.find(from, pos);
    if (hit == std::string::npos || (count >= 0 && n >= count)) break;
    out += s.substr(pos, hit - pos) + to;
    pos = hit + from.size();
    ++n;
  }
  return out + s.substr(pos);
}

std::string title_case(const std::string& s) {
  std::string out = s;
  bool start = true;
  for (char& c : out) {
    const bool alpha = std::isalpha(static_cast<unsigned char>(c));
    c = alpha ? static_cast<char>(start ? std::toupper(c) : std::tolower(c)) : c;
    start = !alpha;
  }
  return out;
}
std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}
std::string upper(std::string s) {
  for (char& c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return s;
}

List split(const std::string& s, const Value& sep, int64_t maxsplit) {
  List out;
  if (sep.kind != Kind::kString) {  // runs of whitespace, no empty strings
    size_t i = 0;
    int64_t n = 0;
    while (true) {
      while (i < s.size() && is_space(s[i])) ++i;
      if (i >= s.size()) break;
      if (maxsplit >= 0 && n >= maxsplit) {
        std::string rest = s.substr(i);
        while (!rest.empty() && is_space(rest.back())) rest.pop_back();
        out.push_back(Value::string(rest));
        break;
      }
      size_t j = i;
      while (j < s.size() && !is_space(s[j])) ++j;
      out.push_back(Value::string(s.substr(i, j - i)));
      ++n;
      i = j;
    }
    return out;
  }
  if (sep.s.empty()) err("split: empty separator");
  size_t pos = 0;
  int64_t n = 0;
  while (true) {
    const size_t hit = s.find(sep.s, pos);
    if (hit == std::string::npos || (maxsplit >= 0 && n >= maxsplit)) break;
    out.push_back(Value::string(s.substr(pos, hit - pos)));
    pos = hit + sep.s.size();
    ++n;
  }
  out.push_back(Value::string(s.substr(pos)));
  return out;
}

bool affix_match(const std::string& s, const Value& what, bool prefix) {
  auto one = [&](const std::string& a) {
    if (a.size() > s.size()) return false;
    return prefix ? s.compare(0, a.size(), a) == 0
                  : s.compare(s.size() - a.size(), a.size(), a) == 0;
  };
  if (what.kind == Kind::kString) return one(what.s);
  if (what.kind == Kind::kList) {
    for (const auto& x : *what.list)
      if (x.kind == Kind::kString && one(x.s)) return true;
    return false;
  }
  err(str_cat(prefix ? "startswith" : "endswith", " first arg must be str or a tuple of str"));
}

Value string_method(const std::string& s, const std::string& name) {
  auto m = [](Function f) { return Value::callable(std::move(f)); };
  if (name == "strip" || name == "lstrip" || name == "rstrip")
    return m([s, name](std::vector<Value>& a, Kwargs&) {
      const Value chars = a.empty() ? Value::none() : a[0];
      return Value::string(strip_chars(s, chars, name != "rstrip", name != "lstrip"));
    });
  if (name == "split")
    return m([s](std::vector<Value>& a, Kwargs& kw) {
      const Value sep = kwarg(kw, "sep", a, 0, Value::none());
      const Value maxs = kwarg(kw, "maxsplit", a, 1, Value::integer(-1));
      return Value::make_list(split(s, sep, as_int(maxs)));
    });
  if (name == "splitlines")
    return m([s](std::vector<Value>&, Kwargs&) {
      List out;
      size_t pos = 0;
      while (pos < s.size()) {
        size_t e = s.find('\n', pos);
        if (e == std::string::npos) e = s.size();
        std::string line = s.substr(pos, e - pos);
        if (!line.empty() && line.back() == '\r') line.pop_back();
        out.push_back(Value::string(line));
        pos = e + 1;
      }
      return Value::make_list(std::move(out));
    });
  if (name == "startswith" || name == "endswith")
    return m([s, name](std::vector<Value>& a, Kwargs&) {
      if (a.empty()) err(name + " takes one argument");
      return Value::boolean(affix_match(s, a[0], name == "startswith"));
    });
  if (name == "upper")
    return m([s](std::vector<Value>&, Kwargs&) { return Value::string(upper(s)); });
  if (name == "lower")
    return m([s](std::vector<Value>&, Kwargs&) { return Value::string(lower(s)); });
  if (name == "title")
    return m([s](std::vector<Value>&, Kwargs&) { return Value::string(title_case(s)); });
  if (name == "capitalize")
    return m([s](std::vector<Value>&, Kwargs&) {
      std::string out = lower(s);
      if (!out.empty())
        out[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(out[0])));
      return Value::string(out);
    });
  if (name == "replace")
    return m([s](std::vector<Value>& a, Kwargs&) {
      if (a.size() < 2 || a[0].kind != Kind::kString || a[1].kind != Kind::kString)
        err("replace takes two strings");
      return Value::string(replace_all(s, a[0].s, a[1].s, a.size() > 2 ? as_int(a[2]) : -1));
    });
  if (name == "find")
    return m([s](std::vector<Value>& a, Kwargs&) {
      if (a.empty() || a[0].kind != Kind::kString) err("find takes a string");
      const size_t p = s.find(a[0].s);
      return Value::integer(
          p == std::string::npos ? -1 : static_cast<int64_t>(code_points(s.substr(0, p)).size()));
    });
  if (name == "count")
    return m([s](std::vector<Value>& a, Kwargs&) {
      if (a.empty() || a[0].kind != Kind::kString || a[0].s.empty())
        err("count takes a non-empty string");
      int64_t n = 0;
      for (size_t p = s.find(a[0].s); p != std::string::npos; p = s.find(a[0].s, p + a[0].s.size()))
        ++n;
      return Value::integer(n);
    });
  if (name == "join")
    return m([s](std::vector<Value>& a, Kwargs&) {
      if (a.empty()) err("join takes an iterable");
      std::string out;
      bool first = true;
      for (const auto& x : iterate(a[0])) {
        if (x.kind != Kind::kString) err(str_cat("join: expected str, got ", type_name(x)));
        out += (first ? "" : s) + x.s;
        first = false;
      }
      return Value::string(out);
    });
  if (name == "isdigit" || name == "isspace")
    return m([s, name](std::vector<Value>&, Kwargs&) {
      bool ok = !s.empty();
      for (char c : s)
        ok = ok &&
             (name == "isdigit" ? std::isdigit(static_cast<unsigned char>(c)) != 0 : is_space(c));
      return Value::boolean(ok);
    });
  return Value::undefined(name);
}

Value dict_method(const Value& d, const std::string& name) {
  auto m = [](Function f) { return Value::callable(std::move(f)); };
  if (name == "items")
    return m([d](std::vector<Value>&, Kwargs&) {
      List out;
      for (const auto& [k, v] : *d.dict)
        out.push_back(Value::make_list({Value::string(k), v}, true));
      return Value::make_list(std::move(out));
    });
  if (name == "keys")
    return m([d](std::vector<Value>&, Kwargs&) { return Value::make_list(iterate(d)); });
  if (name == "values")
    return m([d](std::vector<Value>&, Kwargs&) {
      List out;
      for (const auto& kv : *d.dict) out.push_back(kv.second);
      return Value::make_list(std::move(out));
    });
  if (name == "get")
    return m([d](std::vector<Value>& a, Kwargs&) {
      if (a.empty()) err("get takes a key");
      const Value* v = a[0].kind == Kind::kString ? dict_find(d, a[0].s) : nullptr;
      return v ? *v : (a.size() > 1 ? a[1] : Value::none());
    });
  return Value::undefined(name);
}

// ---------------------------------------------------------------- attribute and item access
// Jinja's getattr-then-getitem for `a.name`.
Value get_attr(const Value& obj, const std::string& name) {
  switch (obj.kind) {
    case Kind::kUndefined:
      err(str_cat("'", obj.s.empty() ? "value" : obj.s, "' is undefined (reading its attribute '",
                  name, "')"));
    case Kind::kDict: {
      if (!obj.is_namespace) {
        Value m = dict_method(obj, name);
        if (m.kind != Kind::kUndefined) return m;
      }
      const Value* v = dict_find(obj, name);
      return v ? *v : Value::undefined(name);
    }
    case Kind::kString:
      return string_method(obj.s, name);
    default:
      return Value::undefined(name);
  }
}

int64_t normalise_index(int64_t i, int64_t n) { return i < 0 ? i + n : i; }

// Jinja's getitem-then-getattr for `a[key]`.
Value get_item(const Value& obj, const Value& key) {
  switch (obj.kind) {
    case Kind::kUndefined:
      err(str_cat("'", obj.s.empty() ? "value" : obj.s, "' is undefined (indexing it with ",
                  repr(key), ")"));
    case Kind::kDict: {
      if (key.kind == Kind::kString) {
        const Value* v = dict_find(obj, key.s);
        if (v) return *v;
        return obj.is_namespace ? Value::undefined(key.s) : dict_method(obj, key.s);
      }
      return Value::undefined(repr(key));
    }
    case Kind::kList: {
      if (key.kind != Kind::kInt && key.kind != Kind::kBool) return Value::undefined(repr(key));
      const int64_t n = static_cast<int64_t>(obj.list->size());
      const int64_t i = normalise_index(as_int(key), n);
      return i >= 0 && i < n ? (*obj.list)[static_cast<size_t>(i)] : Value::undefined(repr(key));
    }
    case Kind::kString: {
      if (key.kind == Kind::kString) return string_method(obj.s, key.s);
      if (key.kind != Kind::kInt) return Value::undefined(repr(key));
      auto cps = code_points(obj.s);
      const int64_t n = static_cast<int64_t>(cps.size());
      const int64_t i = normalise_index(key.i, n);
      return i >= 0 && i < n ? Value::string(cps[static_cast<size_t>(i)])
                             : Value::undefined(repr(key));
    }
    default:
      return Value::undefined(repr(key));
  }
}

// Python slice semantics (negative indices and steps).
std::vector<size_t> slice_indices(int64_t n, const Value& start, const Value& stop,
                                  const Value& step) {
  const int64_t st = step.kind == Kind::kNone || step.kind == Kind::kUndefined ? 1 : as_int(step);
  if (st == 0) err("slice step cannot be zero");
  auto bound = [&](const Value& v, int64_t def, bool is_start) {
    if (v.kind == Kind::kNone || v.kind == Kind::kUndefined) return def;
    int64_t i = as_int(v);
    if (i < 0) i += n;
    if (st > 0) return std::clamp<int64_t>(i, 0, n);
    (void)is_start;
    return std::clamp<int64_t>(i, -1, n - 1);
  };
  std::vector<size_t> out;
  if (st > 0) {
    for (int64_t i = bound(start, 0, true), e = bound(stop, n, false); i < e; i += st)
      out.push_back(static_cast<size_t>(i));
  } else {
    for (int64_t i = bound(start, n - 1, true), e = bound(stop, -1, false); i > e; i += st)
      out.push_back(static_cast<size_t>(i));
  }
  return out;
}

// ---------------------------------------------------------------- arithmetic
// Limits that keep a hostile template from exhausting memory or time.
constexpr size_t kMaxString = size_t{64} << 20;  // bytes of one string / of the output
constexpr int64_t kMaxSteps = 20'000'000;        // loop iterations + macro calls per render
constexpr int kMaxCallDepth = 100;               // nested macro calls

// Python ints are unbounded; past int64 these continue as floats instead of overflowing.
Value int_or_float(bool overflow, int64_t r, double approx) {
  return overflow ? Value::real(approx) : Value::integer(r);
}

Value arith(const std::string& op, const Value& a, const Value& b) {
  if (op == "~" || (op == "+" && a.kind == Kind::kString && b.kind == Kind::kString)) {
    std::string out = to_str(a) + to_str(b);
    if (out.size() > kMaxString) err("string larger than 64 MiB");
    return Value::string(out);
  }
  if (a.kind == Kind::kUndefined || b.kind == Kind::kUndefined)
    err(str_cat("'", a.kind == Kind::kUndefined ? a.s : b.s, "' is undefined (operand of ", op,
                ")"));
  if (op == "+") {
    if (a.kind == Kind::kString && b.kind == Kind::kString) return Value::string(a.s + b.s);
    if (a.kind == Kind::kList && b.kind == Kind::kList) {
      List l = *a.list;
      l.insert(l.end(), b.list->begin(), b.list->end());
      return Value::make_list(std::move(l), a.is_tuple);
    }
  }
  if (op == "*" && ((a.kind == Kind::kString && b.kind == Kind::kInt) ||
                    (a.kind == Kind::kInt && b.kind == Kind::kString))) {
    const std::string& s = a.kind == Kind::kString ? a.s : b.s;
    const int64_t n = a.kind == Kind::kInt ? a.i : b.i;
    if (n > 0 && s.size() * static_cast<size_t>(n) > kMaxString) err("string repetition too large");
    std::string out;
    for (int64_t k = 0; k < n; ++k) out += s;
    return Value::string(out);
  }
  if (!is_number(a) || !is_number(b))
    err(str_cat("unsupported operand type(s) for ", op, ": '", type_name(a), "' and '",
                type_name(b), "'"));
  const bool real = a.kind == Kind::kFloat || b.kind == Kind::kFloat;
  const double x = as_double(a), y = as_double(b);
  const int64_t p = as_int(a), q = as_int(b);
  if (op == "/") {
    if (y == 0) err("division by zero");
    return Value::real(x / y);
  }
  if (op == "//" || op == "%") {
    if (y == 0) err("integer division or modulo by zero");
    if (real) {
      const double fl = std::floor(x / y);
      return Value::real(op == "//" ? fl : x - fl * y);
    }
    if (p == INT64_MIN && q == -1) return Value::real(op == "//" ? -x : 0.0);
    int64_t d = p / q;
    if ((p % q != 0) && ((p < 0) != (q < 0))) --d;
    return Value::integer(op == "//" ? d : p - d * q);
  }
  if (op == "**") {
    if (!real && q >= 0) {  // by squaring, overflow-checked
      int64_t r = 1, base = p;
      bool overflow = false;
      for (int64_t e = q; e > 0 && !overflow; e >>= 1) {
        if (e & 1) overflow = __builtin_mul_overflow(r, base, &r);
        if (e > 1 && !overflow) overflow = __builtin_mul_overflow(base, base, &base);
      }
      return int_or_float(overflow, r, std::pow(x, y));
    }
    return Value::real(std::pow(x, y));
  }
  int64_t r = 0;
  if (real) {
    if (op == "+") return Value::real(x + y);
    if (op == "-") return Value::real(x - y);
    if (op == "*") return Value::real(x * y);
  } else {
    // (the overflow flag is computed before r is read: argument order is unspecified)
    if (op == "+") {
      const bool o = __builtin_add_overflow(p, q, &r);
      return int_or_float(o, r, x + y);
    }
    if (op == "-") {
      const bool o = __builtin_sub_overflow(p, q, &r);
      return int_or_float(o, r, x - y);
    }
    if (op == "*") {
      const bool o = __builtin_mul_overflow(p, q, &r);
      return int_or_float(o, r, x * y);
    }
  }
  err("unknown operator " + op);
}

bool contains(const Value& container, const Value& item) {
  switch (container.kind) {
    case Kind::kUndefined:
      return false;
    case Kind::kString:
      if (item.kind != Kind::kString)
        err(str_cat("'in <string>' requires string as left operand, not ", type_name(item)));
      return container.s.find(item.s) != std::string::npos;
    case Kind::kList:
      for (const auto& x : *container.list)
        if (equal(x, item)) return true;
      return false;
    case Kind::kDict:
      return item.kind == Kind::kString && dict_find(container, item.s) != nullptr;
    default:
      err(str_cat("argument of type '", type_name(container), "' is not iterable"));
  }
}

// ---------------------------------------------------------------- tests
bool run_test(const std::string& name, const Value& v, const std::vector<Value>& args) {
  auto arg = [&](size_t i) -> const Value& {
    if (i >= args.size()) err(str_cat("test '", name, "' needs an argument"));
    return args[i];
  };
  if (name == "defined") return v.kind != Kind::kUndefined;
  if (name == "undefined") return v.kind == Kind::kUndefined;
  if (name == "none") return v.kind == Kind::kNone;
  if (name == "boolean") return v.kind == Kind::kBool;
  if (name == "true") return v.kind == Kind::kBool && v.b;
  if (name == "false") return v.kind == Kind::kBool && !v.b;
  if (name == "integer") return v.kind == Kind::kInt;
  if (name == "float") return v.kind == Kind::kFloat;
  if (name == "number") return is_number(v);
  if (name == "string") return v.kind == Kind::kString;
  if (name == "mapping") return v.kind == Kind::kDict;
  if (name == "iterable")
    return v.kind == Kind::kList || v.kind == Kind::kDict || v.kind == Kind::kString;
  if (name == "sequence")
    return v.kind == Kind::kList || v.kind == Kind::kDict || v.kind == Kind::kString;
  if (name == "callable") return v.kind == Kind::kCallable;
  if (name == "even") return v.kind == Kind::kInt && v.i % 2 == 0;
  if (name == "odd") return v.kind == Kind::kInt && v.i % 2 != 0;
  if (name == "divisibleby") return as_int(arg(0)) != 0 && as_int(v) % as_int(arg(0)) == 0;
  if (name == "eq" || name == "equalto" || name == "==") return equal(v, arg(0));
  if (name == "ne" || name == "!=") return !equal(v, arg(0));
  if (name == "lt" || name == "lessthan" || name == "<") return compare(v, arg(0)) < 0;
  if (name == "le" || name == "<=") return compare(v, arg(0)) <= 0;
  if (name == "gt" || name == "greaterthan" || name == ">") return compare(v, arg(0)) > 0;
  if (name == "ge" || name == ">=") return compare(v, arg(0)) >= 0;
  if (name == "in") return contains(arg(0), v);
  if (name == "sameas")
    return v.kind == arg(0).kind && (v.kind == Kind::kNone || v.kind == Kind::kUndefined ||
                                     (v.kind == Kind::kBool && v.b == arg(0).b) ||
                                     (v.kind == Kind::kList && v.list == arg(0).list) ||
                                     (v.kind == Kind::kDict && v.dict == arg(0).dict));
  if (name == "lower") return v.kind == Kind::kString && lower(v.s) == v.s;
  if (name == "upper") return v.kind == Kind::kString && upper(v.s) == v.s;
  err(str_cat("no test named '", name, "'"));
}

// ---------------------------------------------------------------- the renderer
struct Scope {
  std::vector<std::pair<std::string, Value>> vars;
  Scope* parent = nullptr;
  Value* find(const std::string& name) {
    for (Scope* s = this; s; s = s->parent)
      for (auto& kv : s->vars)
        if (kv.first == name) return &kv.second;
    return nullptr;
  }
  void set(const std::string& name, Value v) {
    for (auto& kv : vars)
      if (kv.first == name) {
        kv.second = std::move(v);
        return;
      }
    vars.emplace_back(name, std::move(v));
  }
};

class Renderer {
 public:
  explicit Renderer(const Program& p) : prog_(p) {}

  std::string run(const json& context) {
    Scope root;
    for (const auto& [k, v] : context.items()) root.set(k, from_json(v));
    root_ = &root;
    std::string out;
    exec_body(prog_.body, root, out);
    return out;
  }

 private:
  [[noreturn]] void fail(int line, const std::string& what) const {
    throw Error(str_cat(prog_.name, ":", line, ": ", what));
  }

  void exec_body(const Body& body, Scope& scope, std::string& out) {
    for (const auto& n : body) exec(*n, scope, out);
  }

  void step(int line) {
    if (++steps_ > kMaxSteps)
      fail(line, str_cat("template too expensive (more than ", kMaxSteps,
                         " loop iterations and macro calls)"));
  }

  void exec(const Node& n, Scope& scope, std::string& out) {
    if (out.size() > kMaxString) fail(n.line, "template output larger than 64 MiB");
    switch (n.kind) {
      case Node::Kind::kText:
        out += n.text;
        return;
      case Node::Kind::kOutput:
        out += to_str(eval(*n.expr, scope));
        return;
      case Node::Kind::kIf:
        for (size_t i = 0; i < n.conditions.size(); ++i)
          if (truthy(eval(*n.conditions[i], scope))) {
            exec_body(n.bodies[i], scope, out);
            return;
          }
        exec_body(n.else_body, scope, out);
        return;
      case Node::Kind::kFor:
        exec_for(n, scope, out);
        return;
      case Node::Kind::kSet:
        exec_set(n, scope);
        return;
      case Node::Kind::kMacro:
        define_macro(n, scope);
        return;
      case Node::Kind::kBreak:
        throw BreakSignal{};
      case Node::Kind::kContinue:
        throw ContinueSignal{};
    }
  }

  // `for a, b in ...` / `set a, b = ...`: the targets of node n take v (unpacked when several).
  void assign_targets(const Node& n, Scope& scope, const Value& v) {
    if (n.targets.size() == 1) {
      scope.set(n.targets[0], v);
      return;
    }
    if (v.kind != Kind::kList || v.list->size() != n.targets.size())
      fail(n.line, str_cat("cannot unpack ", type_name(v), " into ", n.targets.size(), " names"));
    for (size_t i = 0; i < n.targets.size(); ++i) scope.set(n.targets[i], (*v.list)[i]);
  }

  void exec_set(const Node& n, Scope& scope) {
    Value v;
    if (n.block_set) {
      std::string captured;
      exec_body(n.body, scope, captured);
      v = Value::string(captured);
    } else {
      v = eval(*n.expr, scope);
    }
    if (!n.attr_target) {
      assign_targets(n, scope, v);
      return;
    }
    Value* ns = scope.find(n.targets[0]);
    if (!ns || ns->kind != Kind::kDict || !ns->is_namespace)
      fail(n.line, str_cat("cannot assign attribute on '", n.targets[0], "': not a namespace"));
    for (auto& kv : *ns->dict)
      if (kv.first == n.targets[1]) {
        kv.second = v;
        return;
      }
    ns->dict->emplace_back(n.targets[1], v);
  }

  void exec_for(const Node& n, Scope& scope, std::string& out) {
    const Value seq = eval(*n.expr, scope);
    List items;
    try {
      items = iterate(seq);
    } catch (const EvalError& e) {
      fail(n.line, e.what);
    }
    if (n.filter) {  // {% for x in xs if cond %}: the loop sees only the kept items
      List kept;
      for (const auto& it : items) {
        Scope s{{}, &scope};
        assign_targets(n, s, it);
        if (truthy(eval(*n.filter, s))) kept.push_back(it);
      }
      items = std::move(kept);
    }
    const int64_t len = static_cast<int64_t>(items.size());
    for (int64_t i = 0; i < len; ++i) {
      step(n.line);
      Scope s{{}, &scope};
      Dict loop;
      loop.emplace_back("index", Value::integer(i + 1));
      loop.emplace_back("index0", Value::integer(i));
      loop.emplace_back("revindex", Value::integer(len - i));
      loop.emplace_back("revindex0", Value::integer(len - i - 1));
      loop.emplace_back("first", Value::boolean(i == 0));
      loop.emplace_back("last", Value::boolean(i == len - 1));
      loop.emplace_back("length", Value::integer(len));
      loop.emplace_back("previtem",
                        i > 0 ? items[static_cast<size_t>(i - 1)] : Value::undefined("previtem"));
      loop.emplace_back("nextitem", i + 1 < len ? items[static_cast<size_t>(i + 1)]
                                                : Value::undefined("nextitem"));
      loop.emplace_back("cycle", Value::callable([i](std::vector<Value>& a, Kwargs&) {
                          if (a.empty()) err("loop.cycle needs arguments");
                          return a[static_cast<size_t>(i) % a.size()];
                        }));
      s.set("loop", Value::make_dict(std::move(loop)));
      assign_targets(n, s, items[static_cast<size_t>(i)]);
      try {
        exec_body(n.body, s, out);
      } catch (const BreakSignal&) {
        break;
      } catch (const ContinueSignal&) {
        continue;
      }
    }
    if (len == 0) exec_body(n.else_body, scope, out);
  }

  void define_macro(const Node& n, Scope& scope) {
    const Node* node = &n;
    Scope* root = root_;
    scope.set(n.name, Value::callable([this, node, root](std::vector<Value>& args, Kwargs& kw) {
                step(node->line);
                if (call_depth_ >= kMaxCallDepth)
                  err(str_cat("macro '", node->name, "' nested more than ", kMaxCallDepth,
                              " calls deep"));
                struct Depth {
                  int& d;
                  explicit Depth(int& x) : d(x) { ++d; }
                  ~Depth() { --d; }
                } depth(call_depth_);
                if (args.size() > node->params.size())
                  err(str_cat("macro '", node->name, "' takes ", node->params.size(),
                              " arguments, got ", args.size()));
                Scope s{{}, root};
                for (size_t i = 0; i < node->params.size(); ++i) {
                  const auto& [pname, def] = node->params[i];
                  Value v = i < args.size() ? args[i] : Value::undefined(pname);
                  bool given = i < args.size();
                  for (auto& [k, x] : kw)
                    if (k == pname) {
                      v = x;
                      given = true;
                    }
                  if (!given && def) v = eval(*def, s);
                  s.set(pname, v);
                }
                for (auto& [k, x] : kw) {
                  bool known = false;
                  for (const auto& p : node->params) known = known || p.first == k;
                  if (!known)
                    err(str_cat("macro '", node->name, "' has no argument named '", k, "'"));
                }
                std::string out;
                exec_body(node->body, s, out);
                return Value::string(out);
              }));
  }

  Value eval(const Expr& e, Scope& scope) {
    try {
      return eval_inner(e, scope);
    } catch (const EvalError& x) {
      fail(e.line, x.what);
    }
  }

  std::vector<Value> eval_args(const Expr& e, Scope& scope, Kwargs& kw) {
    std::vector<Value> args;
    for (const auto& a : e.items) args.push_back(eval(*a, scope));
    for (const auto& [k, a] : e.kwargs) kw.emplace_back(k, eval(*a, scope));
    return args;
  }

  Value eval_inner(const Expr& e, Scope& scope) {
    switch (e.kind) {
      case Expr::Kind::kLiteral:
        return e.value;
      case Expr::Kind::kName: {
        if (Value* v = scope.find(e.name)) return *v;
        Value g = global(e.name);
        return g.kind == Kind::kUndefined ? Value::undefined(e.name) : g;
      }
      case Expr::Kind::kList: {
        List l;
        for (const auto& x : e.items) l.push_back(eval(*x, scope));
        return Value::make_list(std::move(l), e.is_tuple);
      }
      case Expr::Kind::kDict: {
        Dict d;
        for (size_t i = 0; i < e.keys.size(); ++i) {
          Value k = eval(*e.keys[i], scope);
          if (k.kind != Kind::kString) err("only string keys are supported in dict literals");
          Value v = eval(*e.items[i], scope);
          bool replaced = false;
          for (auto& kv : d)
            if (kv.first == k.s) {
              kv.second = v;
              replaced = true;
            }
          if (!replaced) d.emplace_back(k.s, v);
        }
        return Value::make_dict(std::move(d));
      }
      case Expr::Kind::kAttr:
        return get_attr(eval(*e.a, scope), e.name);
      case Expr::Kind::kItem:
        return get_item(eval(*e.a, scope), eval(*e.b, scope));
      case Expr::Kind::kSlice: {
        const Value obj = eval(*e.a, scope);
        const Value a = e.b ? eval(*e.b, scope) : Value::none();
        const Value b = e.c ? eval(*e.c, scope) : Value::none();
        const Value c = e.d ? eval(*e.d, scope) : Value::none();
        if (obj.kind == Kind::kList) {
          List out;
          for (size_t i : slice_indices(static_cast<int64_t>(obj.list->size()), a, b, c))
            out.push_back((*obj.list)[i]);
          return Value::make_list(std::move(out), obj.is_tuple);
        }
        if (obj.kind == Kind::kString) {
          auto cps = code_points(obj.s);
          std::string out;
          for (size_t i : slice_indices(static_cast<int64_t>(cps.size()), a, b, c)) out += cps[i];
          return Value::string(out);
        }
        if (obj.kind == Kind::kUndefined) err(str_cat("'", obj.s, "' is undefined (slicing it)"));
        err(str_cat("'", type_name(obj), "' object is not subscriptable"));
      }
      case Expr::Kind::kCall: {
        const Value f = eval(*e.a, scope);
        Kwargs kw;
        auto args = eval_args(e, scope, kw);
        if (f.kind != Kind::kCallable) {
          if (f.kind == Kind::kUndefined)
            err(str_cat("'", f.s, "' is undefined (called as a function)"));
          err(str_cat("'", type_name(f), "' object is not callable"));
        }
        return (*f.fn)(args, kw);
      }
      case Expr::Kind::kFilter: {
        Value v = eval(*e.a, scope);
        Kwargs kw;
        auto args = eval_args(e, scope, kw);
        return apply_filter(e.name, v, args, kw, scope);
      }
      case Expr::Kind::kTest: {
        const Value v = eval(*e.a, scope);
        Kwargs kw;
        auto args = eval_args(e, scope, kw);
        return Value::boolean(run_test(e.name, v, args) != e.negated);
      }
      case Expr::Kind::kUnary: {
        const Value v = eval(*e.a, scope);
        if (e.name == "not") return Value::boolean(!truthy(v));
        if (!is_number(v))
          err(str_cat("bad operand type for unary ", e.name, ": '", type_name(v), "'"));
        if (e.name == "+") return v.kind == Kind::kBool ? Value::integer(as_int(v)) : v;
        if (v.kind == Kind::kFloat) return Value::real(-v.f);
        return as_int(v) == INT64_MIN ? Value::real(-as_double(v)) : Value::integer(-as_int(v));
      }
      case Expr::Kind::kBinary: {
        const Value a = eval(*e.a, scope);
        const Value b = eval(*e.b, scope);
        const std::string& op = e.name;
        if (op == "==") return Value::boolean(equal(a, b));
        if (op == "!=") return Value::boolean(!equal(a, b));
        if (op == "<") return Value::boolean(compare(a, b) < 0);
        if (op == ">") return Value::boolean(compare(a, b) > 0);
        if (op == "<=") return Value::boolean(compare(a, b) <= 0);
        if (op == ">=") return Value::boolean(compare(a, b) >= 0);
        if (op == "in") return Value::boolean(contains(b, a));
        if (op == "not in") return Value::boolean(!contains(b, a));
        return arith(op, a, b);
      }
      case Expr::Kind::kAnd: {
        Value a = eval(*e.a, scope);
        return truthy(a) ? eval(*e.b, scope) : a;
      }
      case Expr::Kind::kOr: {
        Value a = eval(*e.a, scope);
        return truthy(a) ? a : eval(*e.b, scope);
      }
      case Expr::Kind::kCondition:
        if (truthy(eval(*e.a, scope))) return eval(*e.b, scope);
        return e.c ? eval(*e.c, scope) : Value::undefined();
    }
    return Value::undefined();
  }

  // ---- globals
  Value global(const std::string& name) {
    auto m = [](Function f) { return Value::callable(std::move(f)); };
    if (name == "namespace" || name == "dict")
      return m([name](std::vector<Value>& a, Kwargs& kw) {
        Dict d;
        for (const auto& x : a) {
          if (x.kind != Kind::kDict) err(name + "() takes a dict or keyword arguments");
          for (const auto& kv : *x.dict) d.push_back(kv);
        }
        for (auto& kv : kw) d.push_back(kv);
        return Value::make_dict(std::move(d), name == "namespace");
      });
    if (name == "range")
      return m([](std::vector<Value>& a, Kwargs&) {
        if (a.empty() || a.size() > 3) err("range takes 1 to 3 integers");
        int64_t start = 0, stop, step = 1;
        if (a.size() == 1) {
          stop = as_int(a[0]);
        } else {
          start = as_int(a[0]);
          stop = as_int(a[1]);
          if (a.size() == 3) step = as_int(a[2]);
        }
        if (step == 0) err("range() step must not be zero");
        List out;
        for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
          out.push_back(Value::integer(i));
          if (out.size() > 1000000) err("range too large");
        }
        return Value::make_list(std::move(out));
      });
    if (name == "raise_exception")
      return m([](std::vector<Value>& a, Kwargs&) -> Value {
        err(str_cat("raise_exception: ", a.empty() ? std::string() : to_str(a[0])));
      });
    if (name == "strftime_now")
      return m([](std::vector<Value>& a, Kwargs&) {
        if (a.empty() || a[0].kind != Kind::kString) err("strftime_now takes a format string");
        const std::time_t t = std::time(nullptr);
        std::tm tm{};
        localtime_r(&t, &tm);
        char buf[256];
        const size_t n = std::strftime(buf, sizeof(buf), a[0].s.c_str(), &tm);
        return Value::string(std::string(buf, n));
      });
    return Value::undefined(name);
  }

  // ---- filters
  Value apply_filter(const std::string& name, Value v, std::vector<Value>& args, Kwargs& kw,
                     Scope& scope) {
    auto need_string = [&](const char* f) {
      if (v.kind == Kind::kUndefined) err(str_cat("'", v.s, "' is undefined (filter ", f, ")"));
      return to_str(v);
    };
    if (name == "safe" || name == "e" || name == "escape") return v;  // autoescape is off
    if (name == "trim")
      return Value::string(
          strip_chars(need_string("trim"), kwarg(kw, "chars", args, 0, Value::none()), true, true));
    if (name == "length" || name == "count") return Value::integer(length(v));
    if (name == "default" || name == "d") {
      const Value def = kwarg(kw, "default_value", args, 0, Value::string(""));
      const bool boolean = truthy(kwarg(kw, "boolean", args, 1, Value::boolean(false)));
      return v.kind == Kind::kUndefined || (boolean && !truthy(v)) ? def : v;
    }
    if (name == "upper") return Value::string(upper(need_string("upper")));
    if (name == "lower") return Value::string(lower(need_string("lower")));
    if (name == "title") return Value::string(title_case(need_string("title")));
    if (name == "capitalize") {
      std::string s = lower(need_string("capitalize"));
      if (!s.empty()) s[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(s[0])));
      return Value::string(s);
    }
    if (name == "string") return Value::string(to_str(v));
    if (name == "tojson") {
      const Value ind = kwarg(kw, "indent", args, 0, Value::none());
      std::string out;
      dump_json(out, v, ind.kind == Kind::kInt ? static_cast<int>(ind.i) : -1, 0);
      return Value::string(out);
    }
    if (name == "first" || name == "last") {
      List items = iterate(v);
      if (items.empty()) return Value::undefined(name);
      return name == "first" ? items.front() : items.back();
    }
    if (name == "list") return Value::make_list(iterate(v));
    if (name == "reverse") {
      if (v.kind == Kind::kString) {
        auto cps = code_points(v.s);
        std::string out;
        for (auto it = cps.rbegin(); it != cps.rend(); ++it) out += *it;
        return Value::string(out);
      }
      List items = iterate(v);
      std::reverse(items.begin(), items.end());
      return Value::make_list(std::move(items));
    }
    if (name == "items") {
      if (v.kind == Kind::kUndefined) return Value::make_list({});
      if (v.kind != Kind::kDict) err("items filter needs a mapping");
      List out;
      for (const auto& [k, x] : *v.dict)
        out.push_back(Value::make_list({Value::string(k), x}, true));
      return Value::make_list(std::move(out));
    }
    if (name == "join") {
      const Value sep = kwarg(kw, "d", args, 0, Value::string(""));
      const Value attr = kwarg(kw, "attribute", args, 1, Value::none());
      std::string out;
      bool first = true;
      for (auto x : iterate(v)) {
        if (attr.kind == Kind::kString) x = get_attr(x, attr.s);
        out += (first ? "" : to_str(sep)) + to_str(x);
        first = false;
      }
      return Value::string(out);
    }
    if (name == "replace") {
      if (args.size() < 2) err("replace filter takes old and new strings");
      return Value::string(replace_all(need_string("replace"), to_str(args[0]), to_str(args[1]),
                                       args.size() > 2 ? as_int(args[2]) : -1));
    }
    if (name == "int") {
      const Value def = kwarg(kw, "default", args, 0, Value::integer(0));
      if (is_number(v))
        return Value::integer(v.kind == Kind::kFloat ? static_cast<int64_t>(v.f) : as_int(v));
      if (v.kind == Kind::kString) {
        try {
          size_t used = 0;
          const std::string s = strip_chars(v.s, Value::none(), true, true);
          const int64_t x = std::stoll(s, &used);
          if (used == s.size()) return Value::integer(x);
          return Value::integer(static_cast<int64_t>(std::stod(s)));
        } catch (const std::exception&) {
        }
      }
      return def;
    }
    if (name == "float") {
      const Value def = kwarg(kw, "default", args, 0, Value::real(0.0));
      if (is_number(v)) return Value::real(as_double(v));
      if (v.kind == Kind::kString) {
        try {
          return Value::real(std::stod(v.s));
        } catch (const std::exception&) {
        }
      }
      return def;
    }
    if (name == "abs") {
      if (!is_number(v)) err("abs needs a number");
      return v.kind == Kind::kFloat ? Value::real(std::fabs(v.f))
                                    : Value::integer(std::llabs(as_int(v)));
    }
    if (name == "round") {
      const int64_t prec = as_int(kwarg(kw, "precision", args, 0, Value::integer(0)));
      const std::string method = to_str(kwarg(kw, "method", args, 1, Value::string("common")));
      const double scale = std::pow(10.0, static_cast<double>(prec));
      const double x = as_double(v) * scale;
      const double r = method == "floor"  ? std::floor(x)
                       : method == "ceil" ? std::ceil(x)
                                          : std::round(x);
      return Value::real(r / scale);
    }
    if (name == "indent") {
      const Value width = kwarg(kw, "width", args, 0, Value::integer(4));
      const bool first = truthy(kwarg(kw, "first", args, 1, Value::boolean(false)));
      const bool blank = truthy(kwarg(kw, "blank", args, 2, Value::boolean(false)));
      const std::string pad = width.kind == Kind::kString
                                  ? width.s
                                  : std::string(static_cast<size_t>(as_int(width)), ' ');
      const std::string s = need_string("indent");
      std::string out;
      size_t pos = 0;
      bool first_line = true;
      while (true) {
        const size_t e = s.find('\n', pos);
        const std::string line =
            s.substr(pos, e == std::string::npos ? std::string::npos : e - pos);
        const bool indent_it = first_line ? first : (blank || !line.empty());
        out += (indent_it && !(first_line && !first) ? pad : "") + line;
        if (e == std::string::npos) break;
        out += "\n";
        pos = e + 1;
        first_line = false;
      }
      return Value::string(out);
    }
    if (name == "wordcount")
      return Value::integer(
          static_cast<int64_t>(split(need_string("wordcount"), Value::none(), -1).size()));
    if (name == "unique") {
      List out;
      for (const auto& x : iterate(v)) {
        bool seen = false;
        for (const auto& y : out) seen = seen || equal(x, y);
        if (!seen) out.push_back(x);
      }
      return Value::make_list(std::move(out));
    }
    if (name == "sort") {
      const bool reverse = truthy(kwarg(kw, "reverse", args, 0, Value::boolean(false)));
      const Value attr = kwarg(kw, "attribute", args, 2, Value::none());
      List items = iterate(v);
      auto key = [&](const Value& x) {
        return attr.kind == Kind::kString ? get_attr(x, attr.s) : x;
      };
      std::stable_sort(items.begin(), items.end(), [&](const Value& a, const Value& b) {
        return reverse ? compare(key(b), key(a)) < 0 : compare(key(a), key(b)) < 0;
      });
      return Value::make_list(std::move(items));
    }
    if (name == "max" || name == "min" || name == "sum") {
      List items = iterate(v);
      if (name == "sum") {
        Value acc = kwarg(kw, "start", args, 1, Value::integer(0));
        const Value attr = kwarg(kw, "attribute", args, 0, Value::none());
        for (const auto& x : items)
          acc = arith("+", acc, attr.kind == Kind::kString ? get_attr(x, attr.s) : x);
        return acc;
      }
      if (items.empty()) return Value::undefined(name);
      Value best = items[0];
      for (const auto& x : items)
        if ((name == "max" && compare(x, best) > 0) || (name == "min" && compare(x, best) < 0))
          best = x;
      return best;
    }
    if (name == "map") {
      const Value attr = kwarg(kw, "attribute", {}, 0, Value::none());
      List out;
      if (attr.kind == Kind::kString) {
        const Value def = kwarg(kw, "default", {}, 0, Value::undefined());
        for (const auto& x : iterate(v)) {
          Value y = get_attr(x, attr.s);
          out.push_back(y.kind == Kind::kUndefined && def.kind != Kind::kUndefined ? def : y);
        }
        return Value::make_list(std::move(out));
      }
      if (args.empty() || args[0].kind != Kind::kString)
        err("map needs a filter name or attribute=");
      std::vector<Value> rest(args.begin() + 1, args.end());
      Kwargs none;
      for (const auto& x : iterate(v)) out.push_back(apply_filter(args[0].s, x, rest, none, scope));
      return Value::make_list(std::move(out));
    }
    if (name == "select" || name == "reject" || name == "selectattr" || name == "rejectattr") {
      const bool by_attr = name == "selectattr" || name == "rejectattr";
      const bool keep_if = name == "select" || name == "selectattr";
      size_t k = 0;
      std::string attr;
      if (by_attr) {
        if (args.empty() || args[0].kind != Kind::kString) err(name + " needs an attribute name");
        attr = args[0].s;
        k = 1;
      }
      const std::string test = k < args.size() ? to_str(args[k]) : "";
      std::vector<Value> targs(
          args.begin() + static_cast<std::ptrdiff_t>(std::min(args.size(), k + 1)), args.end());
      List out;
      for (const auto& x : iterate(v)) {
        const Value y = by_attr ? get_attr(x, attr) : x;
        const bool pass = test.empty() ? truthy(y) : run_test(test, y, targs);
        if (pass == keep_if) out.push_back(x);
      }
      return Value::make_list(std::move(out));
    }
    err(str_cat("no filter named '", name, "'"));
  }

  const Program& prog_;
  Scope* root_ = nullptr;
  int64_t steps_ = 0;
  int call_depth_ = 0;
};

}  // namespace
}  // namespace detail

Template Template::parse(const std::string& source, const std::string& name) {
  Template t;
  t.program_ = detail::parse_program(source, name);
  return t;
}

std::string Template::render(const nlohmann::ordered_json& context) const {
  VLA_CHECK(program_ != nullptr, "jinja: render() on an empty Template");
  VLA_CHECK(context.is_object(), "jinja: the render context must be a JSON object");
  detail::Renderer r(*program_);
  try {
    return r.run(context);
  } catch (const detail::BreakSignal&) {
    throw Error(str_cat(program_->name, ": 'break' outside a loop"));
  } catch (const detail::ContinueSignal&) {
    throw Error(str_cat(program_->name, ": 'continue' outside a loop"));
  }
}

const std::string& Template::name() const {
  static const std::string kEmpty;
  return program_ ? program_->name : kEmpty;
}

}  // namespace vla::jinja
