#include "select/module_order.hpp"

#include <algorithm>
#include <charconv>
#include <map>
#include <string_view>

namespace duquant {
namespace {

// One node per distinct name prefix, held in a flat arena and walked with an explicit stack: no
// recursion (and no recursive destruction) over name parts, however many a name has.
struct Node {
  std::vector<std::pair<std::string, std::size_t>> children;  // part, node index; first-appearance order
  std::map<std::string, std::size_t, std::less<>> index;      // part -> node index
  std::vector<std::size_t> items;                             // names that end at this node
};

bool is_number(std::string_view s) {
  return !s.empty() && s.size() <= 18 && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

unsigned long long number(std::string_view s) {
  unsigned long long v = 0;
  std::from_chars(s.data(), s.data() + s.size(), v);
  return v;
}

// Pre-order: a node's own names, then its children's subtrees in order.
void walk(std::vector<Node>& nodes, std::vector<std::size_t>& out) {
  std::vector<std::size_t> stack{0};
  while (!stack.empty()) {
    Node& node = nodes[stack.back()];
    stack.pop_back();
    out.insert(out.end(), node.items.begin(), node.items.end());
    auto& kids = node.children;
    if (!kids.empty() && std::all_of(kids.begin(), kids.end(), [](const auto& k) { return is_number(k.first); })) {
      std::stable_sort(kids.begin(), kids.end(),
                       [](const auto& a, const auto& b) { return number(a.first) < number(b.first); });
    }
    for (auto it = kids.rbegin(); it != kids.rend(); ++it) stack.push_back(it->second);
  }
}

}  // namespace

std::vector<std::size_t> module_order(const std::vector<std::string>& names) {
  std::vector<Node> nodes(1);  // nodes[0]: the root
  for (std::size_t i = 0; i < names.size(); ++i) {
    std::size_t node = 0;
    std::string_view rest = names[i];
    while (true) {
      const std::size_t dot = rest.find('.');
      const std::string_view part = rest.substr(0, dot);
      auto it = nodes[node].index.find(part);
      if (it == nodes[node].index.end()) {
        const std::size_t child = nodes.size();
        nodes.emplace_back();  // may move the nodes: index again below
        nodes[node].children.emplace_back(std::string(part), child);
        it = nodes[node].index.emplace(std::string(part), child).first;
      }
      node = it->second;
      if (dot == std::string_view::npos) break;
      rest = rest.substr(dot + 1);
    }
    nodes[node].items.push_back(i);
  }
  std::vector<std::size_t> out;
  out.reserve(names.size());
  walk(nodes, out);
  return out;
}

}  // namespace duquant
