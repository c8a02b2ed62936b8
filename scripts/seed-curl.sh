#!/usr/bin/env bash
# The original Django tutorial's four cURL commands (register, login, user, logout), as its
# README gives them, run against a running authd with a check on each answer; `make smoke`
# runs it against BASE_URL. It starts no server itself: start one first (`make run`).
# The one change: a fresh email per run instead of alice@example.com, so reruns pass.
# Prints "N passed, M failed" last and exits 1 if anything failed.
# Usage: scripts/seed-curl.sh [BASE_URL]   (default http://127.0.0.1:8000)
set -u
B=${1:-http://127.0.0.1:8000}
dir=$(mktemp -d); cd "$dir" || exit 1
pass=0 fail=0
check() { if eval "$2"; then pass=$((pass+1)); else fail=$((fail+1)); echo "FAILED: $1"; fi; }
email="alice-$RANDOM$RANDOM@example.com"   # the seed uses alice@example.com; a fresh one keeps reruns independent

reg=$(curl -s -w '\n%{http_code}' -X POST $B/api/register/ \
  -H "Content-Type: application/json" \
  -d '{"name":"Alice","email":"'$email'","password":"Password123"}')
check "register answers 201 with the user" '[[ $(tail -1 <<<"$reg") == 201 && $reg == *"\"email\":\"$email\""* && $reg != *Password123* ]]'

login=$(curl -s -i -X POST $B/api/login/ \
  -H "Content-Type: application/json" \
  -d '{"email":"'$email'","password":"Password123"}' \
  -c cookies.txt)
check "login answers 200 and sets an HttpOnly jwt cookie" '[[ $login == "HTTP/1.1 200"* && $(grep -ci "^set-cookie: jwt=.*httponly" <<<"$login") == 1 ]]'
check "the cookie jar holds the jwt cookie" 'grep -q "	jwt	" cookies.txt'

user=$(curl -s -w '\n%{http_code}' -X GET $B/api/user/ -b cookies.txt)
check "user answers 200 with Alice" '[[ $(tail -1 <<<"$user") == 200 && $user == *"\"name\":\"Alice\""* ]]'

out=$(curl -s -w '\n%{http_code}' -X POST $B/api/logout/ -b cookies.txt)
check "logout answers 200 success" '[[ $(tail -1 <<<"$out") == 200 && $out == *success* ]]'

again=$(curl -s -o /dev/null -w '%{http_code}' -X GET $B/api/user/ -b cookies.txt)
check "the logged-out token no longer works" '[[ $again == 401 ]]'

cd /; rm -rf "$dir"
echo "$pass passed, $fail failed"
[ $fail = 0 ]
