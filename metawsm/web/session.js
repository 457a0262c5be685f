// The page's half of the UI session (docs/security.md): the page key.
//
// The login link redirects to `/#login=mwk_…`. The key is moved from the address bar into this
// origin's localStorage at once (before the router reads the hash), and every API request sends
// it next to the HttpOnly session cookie. Cookies are shared by every port of 127.0.0.1; this
// storage is not, so a page served from another local port never holds both halves.

const STORAGE_KEY = "metawsm.pageKey";
const LOGIN = /^#login=(mwk_[0-9a-f]+)$/;

function capturePageKey() {
  const found = location.hash.match(LOGIN);
  if (!found) return;
  try {
    localStorage.setItem(STORAGE_KEY, found[1]);
  } catch (_) {
    // Storage refused (private mode): requests will say how to log in again.
  }
  history.replaceState(null, "", location.pathname + location.search);
}

export function pageKey() {
  try {
    return localStorage.getItem(STORAGE_KEY) || "";
  } catch (_) {
    return "";
  }
}

capturePageKey();
