// Runs in <head> before the stylesheet: ?theme= if valid, else the one this tab last saw, else light
// (the Dashboard may leave ?theme out, e.g. on widgets; app-sdk defaults to light too).
(function () {
  "use strict";
  var KEY = "klarna-om-theme";
  var theme = new URLSearchParams(location.search).get("theme");
  if (theme !== "light" && theme !== "dark") {
    try { theme = sessionStorage.getItem(KEY); } catch (e) { theme = null; }  // storage may be blocked in third-party iframes
  }
  if (theme !== "dark") theme = "light";
  document.documentElement.dataset.theme = theme;
  try { sessionStorage.setItem(KEY, theme); } catch (e) { /* nothing to keep it in */ }
})();
