// Internal to src/jinja: values and the syntax tree shared by the parser and the renderer.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace vla::jinja::detail {

// Python's str.isspace() over ASCII: the whitespace of Jinja's lexer, strip() and split().
inline bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

struct Value;
using List = std::vector<Value>;
using Dict = std::vector<std::pair<std::string, Value>>;  // insertion order, as Python dicts
using Kwargs = std::vector<std::pair<std::string, Value>>;
using Function = std::function<Value(std::vector<Value>& args, Kwargs& kwargs)>;

// A Jinja value: Python's None / bool / int / float / str / list / tuple / dict, a namespace
// (a dict whose attributes `set` may assign), a callable, or Undefined (with the name that was
// looked up, for error messages).
struct Value {
  enum class Kind { kUndefined, kNone, kBool, kInt, kFloat, kString, kList, kDict, kCallable };
  Kind kind = Kind::kUndefined;
  bool b = false;
  int64_t i = 0;
  double f = 0;
  std::string s;  // string, or the name of an undefined value
  std::shared_ptr<List> list;
  std::shared_ptr<Dict> dict;
  std::shared_ptr<Function> fn;
  bool is_tuple = false;      // a list that prints as (a, b)
  bool is_namespace = false;  // a dict whose attributes may be assigned

  static Value undefined(std::string name = "") {
    Value v;
    v.s = std::move(name);
    return v;
  }
  static Value none() { return with(Kind::kNone); }
  static Value boolean(bool x) {
    Value v = with(Kind::kBool);
    v.b = x;
    return v;
  }
  static Value integer(int64_t x) {
    Value v = with(Kind::kInt);
    v.i = x;
    return v;
  }
  static Value real(double x) {
    Value v = with(Kind::kFloat);
    v.f = x;
    return v;
  }
  static Value string(std::string x) {
    Value v = with(Kind::kString);
    v.s = std::move(x);
    return v;
  }
  static Value make_list(List items, bool tuple = false) {
    Value v = with(Kind::kList);
    v.list = std::make_shared<List>(std::move(items));
    v.is_tuple = tuple;
    return v;
  }
  static Value make_dict(Dict items, bool ns = false) {
    Value v = with(Kind::kDict);
    v.dict = std::make_shared<Dict>(std::move(items));
    v.is_namespace = ns;
    return v;
  }
  static Value callable(Function f) {
    Value v = with(Kind::kCallable);
    v.fn = std::make_shared<Function>(std::move(f));
    return v;
  }

 private:
  static Value with(Kind k) {
    Value v;
    v.kind = k;
    return v;
  }
};

// ---------------------------------------------------------------- expressions
struct Expr;
using ExprPtr = std::shared_ptr<Expr>;

struct Expr {
  enum class Kind {
    kLiteral,    // value
    kName,       // name
    kList,       // items (tuple: is_tuple)
    kDict,       // keys[i] : items[i]
    kAttr,       // a.name
    kItem,       // a[b]
    kSlice,      // a[b:c:d] (null parts are absent)
    kCall,       // a(items..., kw...)
    kFilter,     // a | name(items..., kw...)
    kTest,       // a is [not] name(items...)
    kUnary,      // op a   ("-", "+", "not")
    kBinary,     // a op b (arithmetic, comparison, "in", "not in", "~")
    kAnd,        // a and b
    kOr,         // a or b
    kCondition,  // b if a else c   (c may be null: undefined)
  };
  Kind kind = Kind::kLiteral;
  int line = 0;
  Value value;
  std::string name;  // name, attribute, filter, test, operator
  bool negated = false;
  bool is_tuple = false;
  ExprPtr a, b, c, d;
  std::vector<ExprPtr> items, keys;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
};

// ---------------------------------------------------------------- statements
struct Node;
using Body = std::vector<std::shared_ptr<Node>>;

struct Node {
  enum class Kind {
    kText,    // text
    kOutput,  // {{ expr }}
    kIf,      // conditions[i] -> bodies[i]; else_body
    kFor,     // for targets in expr [if filter]: body; else_body
    kSet,     // set targets = expr, or set ns.attr = expr, or block set (body)
    kMacro,   // macro name(params = defaults): body
    kBreak,
    kContinue,
  };
  Kind kind = Kind::kText;
  int line = 0;
  std::string text;
  ExprPtr expr, filter;
  std::vector<ExprPtr> conditions;
  std::vector<Body> bodies;
  Body body, else_body;
  std::vector<std::string> targets;  // for / set names; set ns.attr: {ns, attr} with attr_target
  bool attr_target = false;
  bool block_set = false;
  std::string name;                                     // macro name
  std::vector<std::pair<std::string, ExprPtr>> params;  // macro parameters (default may be null)
};

struct Program {
  std::string name;
  Body body;
};

// Parses a template (parse.cpp). Throws vla::Error "<name>:<line>: ...".
std::shared_ptr<Program> parse_program(const std::string& source, const std::string& name);

}  // namespace vla::jinja::detail
