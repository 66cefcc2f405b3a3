// libstdc++: std::string, std::map, std::unordered_map, std::vector, algorithms with lambdas,
// shared_ptr, iostream (std::cout with manipulators, stringstreams), std::function.
#include <algorithm>
#include <functional>
#include <iomanip>
#include <iostream>
#include <map>
#include <memory>
#include <numeric>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

int main() {
    std::string text = "the quick brown fox jumps over the lazy dog the end";
    std::map<std::string, int> counts;
    std::istringstream in(text);
    for (std::string w; in >> w;) counts[w]++;
    for (const auto &[word, n] : counts) std::cout << word << '=' << n << ' ';
    std::cout << '\n';

    std::unordered_map<int, std::string> squares;
    for (int i = 0; i < 100; i++) squares[i * i] = std::to_string(i);
    std::cout << "sqrt(49)=" << squares.at(49) << " size=" << squares.size() << std::endl;

    std::vector<int> v(50);
    std::iota(v.begin(), v.end(), 1);
    std::sort(v.begin(), v.end(), [](int a, int b) { return (a % 7) < (b % 7) || ((a % 7) == (b % 7) && a < b); });
    std::cout << "sorted by mod 7:";
    for (int i = 0; i < 10; i++) std::cout << ' ' << v[i];
    std::cout << "\nsum=" << std::accumulate(v.begin(), v.end(), 0L) << '\n';

    std::string s(100, 'x');
    s.replace(10, 80, "middle");
    s += std::string("+tail");
    std::cout << "string: " << s << " (" << s.size() << ")\n";

    auto sp = std::make_shared<std::vector<std::string>>(3, "shared");
    auto sp2 = sp;
    std::cout << "use_count=" << sp.use_count() << " first=" << (*sp2)[0] << '\n';

    std::function<int(int)> f = [k = 3](int x) { return x * k; };
    std::cout << "function: " << f(14) << '\n';

    std::ostringstream os;
    os << std::hex << std::setw(8) << std::setfill('0') << 48879 << ' ' << std::dec << std::fixed
       << std::setprecision(3) << 3.14159265 << ' ' << std::boolalpha << true;
    std::cout << "formatted: " << os.str() << std::endl;
    std::cerr << "to stderr (not compared)\n";
    return counts["the"] == 3 ? 0 : 1;
}
