// Started from a file of its own: the page allows no inline script.
Redoc.init("/openapi.json", {}, document.getElementById("redoc"));
