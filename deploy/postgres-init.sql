-- Logins for deploy/docker-compose.yml, as scripts/stack makes them for the
-- local stack (docs/OPERATIONS.md, "Database roles"). Laptop passwords.
CREATE ROLE riskstream_owner NOLOGIN;
CREATE ROLE riskstream_writer NOLOGIN;
CREATE ROLE riskstream_analyst NOLOGIN;
CREATE ROLE riskstream_migrator LOGIN PASSWORD 'dev-migrator' IN ROLE riskstream_owner;
CREATE ROLE riskstream_engine LOGIN PASSWORD 'dev-engine' IN ROLE riskstream_writer;
CREATE ROLE riskstream_analyst_user LOGIN PASSWORD 'dev-analyst' IN ROLE riskstream_analyst;
ALTER DATABASE riskstream OWNER TO riskstream_owner;
