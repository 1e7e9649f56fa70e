// The app's side of Saleor's AppBridge (saleor-app-protocol.md §6), in plain JavaScript.
// In:  handshake and tokenRefresh carry the token, theme switches light/dark.
// Out: notifyReady, notification and widgetResize, each with a fresh actionId.
// The token lives in memory only and goes to our own API in the authorization-bearer header: no cookies.
(function () {
  "use strict";

  var params = new URLSearchParams(location.search);
  var saleorApiUrl = params.get("saleorApiUrl") || "";
  var apiBase = document.body.dataset.api || "/api/dashboard";
  var embedded = window.parent !== window;

  function originOf(url) {
    try { return new URL(url).origin; } catch (e) { return null; }
  }

  // Accept messages only from our parent and only from the dashboard's origin, which app-sdk takes
  // from document.referrer. After a navigation inside the iframe the referrer is our own origin;
  // then fall back to the Saleor API's origin, where the dashboard is usually served.
  var referrer = originOf(document.referrer);
  var dashboardOrigin = referrer && referrer !== location.origin ? referrer : originOf(saleorApiUrl);

  var token = null;
  var waiting = [];
  var refreshed = [];

  function actionId() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    // randomUUID needs a secure context; an http:// app on a LAN host has only getRandomValues.
    var b = crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 15) | 64;
    b[8] = (b[8] & 63) | 128;
    var x = Array.prototype.map.call(b, function (n) { return (n + 256).toString(16).slice(1); }).join("");
    return [x.slice(0, 8), x.slice(8, 12), x.slice(12, 16), x.slice(16, 20), x.slice(20)].join("-");
  }

  function send(type, payload) {
    if (!embedded) return;
    // Like app-sdk, post to "*": nothing secret goes up, and the dashboard checks our origin itself.
    window.parent.postMessage({ type: type, payload: Object.assign({ actionId: actionId() }, payload || {}) }, "*");
  }

  function setTheme(theme) {
    if (theme !== "light" && theme !== "dark") return;
    document.documentElement.dataset.theme = theme;
    try { sessionStorage.setItem("klarna-om-theme", theme); } catch (e) { /* blocked storage */ }
  }

  window.addEventListener("message", function (event) {
    if (!embedded || event.source !== window.parent || event.origin !== dashboardOrigin) return;
    var data = event.data;
    if (!data || typeof data !== "object" || typeof data.type !== "string") return;
    var payload = data.payload && typeof data.payload === "object" ? data.payload : {};
    if ((data.type === "handshake" || data.type === "tokenRefresh") && typeof payload.token === "string" && payload.token) {
      var first = token === null;
      token = payload.token;
      waiting.splice(0).forEach(function (resolve) { resolve(token); });
      if (!first) refreshed.forEach(function (listener) { listener(token); });
    } else if (data.type === "theme") {
      setTheme(payload.theme);
    }
  });

  function ready() {
    return new Promise(function (resolve) { if (token) resolve(token); else waiting.push(resolve); });
  }

  function api(method, path, body) {
    var headers = { "authorization-bearer": token || "", "saleor-api-url": saleorApiUrl, "accept": "application/json" };
    if (body !== undefined) headers["content-type"] = "application/json";
    return fetch(apiBase + path, {
      method: method, headers: headers, credentials: "omit", cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body),
    }).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (data) {
        if (response.ok) return data;
        var error = new Error((data.error && data.error.message) || "The app answered " + response.status);
        error.status = response.status;
        error.data = data;
        throw error;
      });
    });
  }

  // Report the real height to the Dashboard (>= 3.23.7), measured on a wrapper, not on html/body.
  function autoResize(element) {
    if (!window.ResizeObserver) return;
    var last = 0;
    new ResizeObserver(function () {
      var height = Math.ceil(element.getBoundingClientRect().height);
      if (height !== last) { last = height; send("widgetResize", { height: height }); }
    }).observe(element);
  }

  // h("td", {class: "x", onclick: fn}, "text", node): strings become text nodes, never HTML.
  function h(tag, attrs) {
    var el = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) {
      var value = attrs[key];
      if (value === null || value === undefined || value === false) return;
      if (key.slice(0, 2) === "on") el.addEventListener(key.slice(2), value);
      else if (key === "class") el.className = value;
      else el.setAttribute(key, value === true ? "" : value);
    });
    for (var i = 2; i < arguments.length; i++) append(el, arguments[i]);
    return el;
  }

  function append(el, child) {
    if (child === null || child === undefined || child === false) return;
    if (Array.isArray(child)) child.forEach(function (c) { append(el, c); });
    else el.appendChild(typeof child === "object" ? child : document.createTextNode(String(child)));
  }

  function when(iso) {
    if (!iso) return "";
    return new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" }).format(new Date(iso));
  }

  window.KlarnaBridge = {
    embedded: embedded, saleorApiUrl: saleorApiUrl, orderId: params.get("orderId") || "",
    ready: ready, api: api, send: send, autoResize: autoResize, h: h, when: when,
    // Called with each later token (tokenRefresh, or a new handshake): e.g. to retry after a 401.
    onRefresh: function (listener) { refreshed.push(listener); },
    notify: function (status, title, text) { send("notification", { status: status, title: title, text: text }); },
    redirect: function (to) { send("redirect", { to: to }); },
  };
  send("notifyReady", {});
})();
