// The order widget: Klarna's live state of one order, its operations and open exceptions (with Retry).
(function () {
  "use strict";
  var B = window.KlarnaBridge, h = B.h;
  var root = document.getElementById("widget");
  var STATUS = {
    AUTHORIZED: ["info", "Authorized"], PART_CAPTURED: ["warning", "Partly captured"], CAPTURED: ["success", "Captured"],
    CANCELLED: ["error", "Cancelled"], EXPIRED: ["neutral", "Expired"], CLOSED: ["neutral", "Closed"],
  };
  var STATE_PILLS = { succeeded: "success", pending: "warning", failed: "error" };

  B.autoResize(root);
  if (!B.embedded) show(note("Open an order in the Saleor dashboard to see its Klarna payment."));
  else if (!B.orderId) show(note("No order: the dashboard did not say which order this is."));
  var unauthorized = false;
  B.ready().then(load);
  B.onRefresh(function () { if (unauthorized) load(); });

  function show() { root.replaceChildren.apply(root, Array.prototype.slice.call(arguments).filter(Boolean)); }
  function note(text) { return h("div", { class: "empty" }, text); }
  function callout(kind, title, text) {
    return h("div", { class: "callout " + kind }, h("span", { class: "icon" }), h("div", null, h("strong", null, title), text ? h("p", null, text) : null));
  }
  function pill(kind, text) { return h("span", { class: "pill pill-" + kind }, text); }

  function load() {
    if (!B.orderId) return;
    unauthorized = false;
    B.api("GET", "/orders/" + encodeURIComponent(B.orderId)).then(render).catch(function (error) {
      unauthorized = error.status === 401;
      show(callout("critical", error.status === 401 || error.status === 403 ? "Not allowed" : "Klarna state unavailable", error.message));
    });
  }

  function render(data) {
    var books = data.books;
    if (books && books.kind === "foreign") {
      show(callout("info", "Kept by " + books.kept_by, "Another app keeps this Klarna payment's books; this app leaves it alone (" + books.reason + ")."));
      return;
    }
    if (!data.klarna_order_id) {
      show(note("Not a Klarna order: it has no Klarna transaction and no Klarna order id in its metadata."),
        data.saleor_error ? callout("warning", "Saleor did not answer", data.saleor_error) : null);
      return;
    }
    var k = data.klarna;
    var status = k ? STATUS[k.status] || ["neutral", k.status] : null;
    show(
      h("div", { class: "inline" },
        status ? pill(status[0], status[1]) : null,
        k && k.fraud_status && k.fraud_status !== "ACCEPTED" ? pill(k.fraud_status === "REJECTED" ? "error" : "warning", "Fraud " + k.fraud_status.toLowerCase()) : null,
        null),
      badge(data.badge),
      !data.configured ? callout("warning", "Klarna is not configured", "Set the API credentials for this order's channel on the app's page.") : null,
      data.klarna_error ? callout("critical", "Klarna did not answer", data.klarna_error) : null,
      amounts(k, data.klarna_order_id, !data.badge || data.badge.show_expiry, books),
      k && k.captures.length ? section("Captures", k.captures.map(function (c) { return line(c.id, c.display); })) : null,
      k && k.refunds.length ? section("Refunds", k.refunds.map(function (r) { return line(r.id, r.display); })) : null,
      data.exceptions.length ? section("Open exceptions", data.exceptions.map(exceptionLine)) : null,
      data.operations.length ? section("Operations", data.operations.map(operationLine)) : null);
  }

  // Warnings the server worked out: fulfilled but not captured, an open exception, expiry near.
  function badge(b) {
    if (!b || !b.warnings.length) return null;
    return h("div", { class: "inline", role: "status" }, b.warnings.map(function (w) {
      return h("span", { class: "pill pill-" + (w.code === "EXCEPTION_OPEN" ? "error" : "warning"), title: w.code }, w.text);
    }));
  }

  function amounts(k, klarnaOrderId, showExpiry, books) {
    function item(label, value) { return h("div", null, h("dt", null, label), h("dd", null, value)); }
    function wide(label, value, cls) {
      return h("div", { class: "wide" }, h("dt", null, label), h("dd", { class: cls || null }, value));
    }
    if (!k) return h("dl", { class: "kv" }, wide("Klarna order", klarnaOrderId, "mono ids"));
    return h("dl", { class: "kv" },
      item("Authorized", k.authorized.display), item("Captured", k.captured.display),
      item("Refunded", k.refunded.display), item("Remaining", k.remaining.display),
      k.expires_at && showExpiry ? wide("Authorization expires", B.when(k.expires_at)) : null,
      wide("Klarna order", klarnaOrderId, "mono ids"),
      books ? wide("Books in Saleor", books.booked_here ? "Kept by this app on its Klarna transaction" : "Kept by " + (books.kept_by || "another payment") + "; this app writes notes only") : null);
  }

  function section(title, rows) { return h("div", null, h("h3", null, title), h("div", { class: "list" }, rows)); }

  function line(id, amount) {
    return h("div", null, h("span", { class: "grow mono muted", title: "Klarna id" }, id), h("span", { class: "num" }, amount));
  }

  function operationLine(op) {
    return h("div", null,
      h("span", { class: "grow" }, op.kind.charAt(0).toUpperCase() + op.kind.slice(1) + " ", h("span", { class: "num" }, op.amount_display),
        h("span", { class: "muted" }, " · " + B.when(op.created_at))),
      pill(STATE_PILLS[op.state] || "neutral", op.state));
  }

  function exceptionLine(exc) {
    var button = h("button", { type: "button", class: "btn btn-secondary btn-sm", onclick: function () { retry(exc.id, button); } }, "Retry");
    var message = exc.message || "";
    if (exc.error_code && message.indexOf(exc.error_code) === 0) message = message.slice(exc.error_code.length).replace(/^[\s:·-]+/, "");
    return h("div", null, h("span", { class: "grow" }, pill("error", exc.error_code || "ERROR"), " ", message), button);
  }

  function retry(id, button) {
    button.disabled = true;
    B.api("POST", "/exceptions/" + id + "/retry")
      .then(function (result) { B.notify("success", result.message); load(); })
      .catch(function (error) { button.disabled = false; B.notify("error", "Retry failed", error.message); });
  }
})();
