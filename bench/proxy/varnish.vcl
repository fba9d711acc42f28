vcl 4.1;
# Varnish (malloc storage) with the same policy: playlists honour the origin's max-age (1 s),
# segments a day, grace for stale-while-revalidate; request coalescing is Varnish's default.
backend origin { .host = "127.0.0.1"; .port = "ORIGIN_PORT"; }
sub vcl_recv { unset req.http.Cookie; return (hash); }
sub vcl_hash { hash_data(req.http.host); hash_data(req.url); return (lookup); }
sub vcl_backend_response {
    if (bereq.url ~ "\.m3u8$") { set beresp.ttl = 1s; set beresp.grace = 2s; }
    else if (beresp.status == 200) { set beresp.ttl = 1d; }
    else { set beresp.ttl = 1s; }
}
