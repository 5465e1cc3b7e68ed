"""HTTP routes, thin over the service modules: parse, call one function, return."""
