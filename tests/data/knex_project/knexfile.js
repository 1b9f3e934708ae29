// The schema team's knex setup as they run it (`npm run migrate` = `knex migrate:latest`).
module.exports = {
  client: 'pg',
  connection: process.env.DATABASE_URL,
  migrations: { directory: './migrations', tableName: 'knex_migrations' },
};
